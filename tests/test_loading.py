"""Model loading: local folders (SD 1.x and SDXL layouts), clear offline errors, input validation."""

import time

import pytest
import torch

from ablations import ModelNotFoundError, check_prompts, load_pipeline
from ablations import loading
from ablations.loading import resolve_device, resolve_dtype
from tiny_sd import testing


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    return testing.save_random_pipeline(tmp_path_factory.mktemp("sd15") / "pipe", "sd15")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return testing.save_random_pipeline(tmp_path_factory.mktemp("sdxl") / "pipe", "sdxl")


def test_local_sd15_folder_loads_and_generates_requested_size(sd15_dir):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(str(sd15_dir), device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    out = pipe("a red circle", num_inference_steps=2, height=64, width=96, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 96, 3)


def test_cached_base_is_shared_but_pipeline_objects_are_new(sd15_dir):
    a = load_pipeline(str(sd15_dir), device="cpu")
    b = load_pipeline(str(sd15_dir), device="cpu")
    assert a is not b and a.unet is b.unet  # modules come from the cache: surgery must copy


def test_local_sdxl_folder_loads_with_the_sdxl_pipeline(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = load_pipeline(str(sdxl_dir), device="cpu")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    out = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)


def test_missing_hub_model_gives_one_clear_message_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t = time.time()
    with pytest.raises(ModelNotFoundError) as e:
        load_pipeline("sd15", download=True)
    assert time.time() - t < 10
    msg = str(e.value)
    assert "stable-diffusion-v1-5" in msg and "HF cache" in msg and "model.path=" in msg
    assert "HF_HUB_OFFLINE=1 is set" in msg


def test_missing_local_folder_and_non_pipeline_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model.path="):
        load_pipeline(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_check_prompts_vocabulary_and_sizes():
    pipe = testing.random_pipeline()
    check_prompts(pipe, ["a red circle left of a blue square"], 64, 96)
    with pytest.raises(ValueError, match="vocabulary"):
        check_prompts(pipe, "a red hexagon")
    with pytest.raises(ValueError, match="multiple of 16"):
        check_prompts(pipe, "a red circle", height=72)
    with pytest.raises(ValueError, match="more than"):
        check_prompts(pipe, " ".join(["a red circle"] * 30))


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="choose from"):
        resolve_dtype("float8", torch.device("cpu"))


def test_device_resolution_names_the_choices_and_missing_accelerators(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "meta", "cuda:x"):
        with pytest.raises(ValueError, match="choose from auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\) exist: use cuda:0..cuda:0"):
        resolve_device("cuda:3")


def test_cli_with_an_unknown_device_stops_with_exit_code_2(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "ablations", "budget=smoke", "model.device=gpu"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "unknown device 'gpu'; choose from auto, cpu, cuda, cuda:N, mps" in p.stderr
    assert "Nothing was computed" in p.stderr and "Traceback" not in p.stderr + p.stdout


def test_cli_with_missing_weights_stops_with_one_message(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "ablations", "model=sd15", "budget=smoke"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Could not find the weights for model 'stable-diffusion-v1-5/stable-diffusion-v1-5'" in p.stderr
    assert "Nothing was computed" in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("result.json"))
