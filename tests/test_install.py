"""Installing works outside the source folder: a plain (non-editable) install carries configs and weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


def _run(code_or_args, site: Path, cwd: Path, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, *code_or_args]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_packages_import_from_site_not_source(installed, tmp_path):
    r = _run(["-c", "import ablations, tiny_sd, probes, metrics, reports; print(ablations.__file__)"], installed, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(str(installed))


def test_cli_runs_from_another_directory(installed, tmp_path):
    r = _run(["-m", "ablations", "--cfg", "job"], installed, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "model:" in r.stdout and "tiny_sd" in r.stdout


def test_shipped_weights_are_installed_and_load_offline(installed, tmp_path):
    if not (ROOT / "tiny_sd" / "weights" / "pipeline" / "model_index.json").exists():
        pytest.fail("tiny_sd weights are not in the source tree")
    code = ("from ablations import load_pipeline; import torch;"
            "p = load_pipeline('tiny_sd', device='cpu');"
            "im = p('a red circle', num_inference_steps=2, output_type='np').images;"
            "print(type(p).__name__, im.shape, p.unet.config.sample_size * p.vae_scale_factor)")
    r = _run(["-c", code], installed, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "StableDiffusionPipeline (1, 64, 64, 3) 64" in r.stdout
