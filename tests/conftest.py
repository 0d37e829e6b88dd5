"""Fixtures shared by the test files: random-weight pipelines with tiny_sd's architecture (in memory, and saved as a
diffusers folder). Module-scoped, so a test file that changes one never leaks into another."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def pipe():
    """A `StableDiffusionPipeline` with tiny_sd's architecture and random weights (seed 0), progress bars off."""
    from tiny_sd.testing import random_pipeline

    p = random_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """That pipeline's layout saved as a diffusers folder (the `model.path=DIR` branch of loading)."""
    from tiny_sd.testing import save_random_pipeline

    return save_random_pipeline(tmp_path_factory.mktemp("pipe") / "random_sd", layout="sd15")
