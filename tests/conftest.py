"""Fixtures shared by the test files: random-weight pipelines with tiny_sd's architecture (in memory, and saved as a
diffusers folder). Module-scoped, so a test file that changes one never leaks into another."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each (and each CLI subprocess it starts, through
    OMP_NUM_THREADS) gets its share of torch intra-op threads instead of all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


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
