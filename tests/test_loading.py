"""Model loading: local folders (SD 1.x and SDXL layouts), clear offline errors, input validation."""

import time

import pytest
import torch

from ablations import ModelNotFoundError, check_prompts, load_pipeline
from foundation import loading
from foundation.loading import resolve_device, resolve_dtype
from tiny_sd import testing


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return testing.save_random_pipeline(tmp_path_factory.mktemp("sdxl") / "pipe", "sdxl")


def test_local_sd15_folder_loads_and_generates_requested_size(model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(str(model_dir), device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    out = pipe("a red circle", num_inference_steps=2, height=64, width=96, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 96, 3)


def test_cached_base_is_shared_but_pipeline_objects_are_new(model_dir):
    a = load_pipeline(str(model_dir), device="cpu")
    b = load_pipeline(str(model_dir), device="cpu")
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
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
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


# ------------------------------------------------------------------ canonical layout and load verification
def test_shipped_weights_use_the_key_layout_of_real_sd_checkpoints():
    """Read the shipped safetensors headers: the text encoder's keys sit under `text_model.` as in every SD
    1.x/2.x/SDXL text encoder (transformers 4 and 5 both load that), the UNet and VAE in diffusers' names."""
    from foundation.checkpoints import header_keys

    root = loading.TINY_SD_DIR
    text = header_keys(root / "text_encoder" / "model.safetensors")
    assert text and all(k.startswith("text_model.") for k in text)
    assert "text_model.embeddings.token_embedding.weight" in text
    assert "text_model.final_layer_norm.weight" in text
    unet = header_keys(root / "unet" / "diffusion_pytorch_model.safetensors")
    assert "conv_in.weight" in unet and any(".attn2.to_k.weight" in k for k in unet)
    vae = header_keys(root / "vae" / "diffusion_pytorch_model.safetensors")
    assert any(k.startswith("encoder.") for k in vae) and any(k.startswith("decoder.") for k in vae)
    assert not any(k.endswith((".query.weight", ".proj_attn.weight")) for k in vae)  # no legacy attention names


def test_tiny_sd_loads_bit_exactly_from_its_files():
    from foundation.checkpoints import verify_pipeline

    pipe = load_pipeline("tiny_sd", device="cpu")
    checked = verify_pipeline(pipe, loading.TINY_SD_DIR)
    assert checked == {"vae": 156, "text_encoder": 52, "unet": 496}


def test_saved_pipelines_are_canonical(model_dir, sdxl_dir):
    from foundation.checkpoints import header_keys

    for d, encoders in ((model_dir, ["text_encoder"]), (sdxl_dir, ["text_encoder", "text_encoder_2"])):
        for enc in encoders:
            keys = header_keys(d / enc / "model.safetensors")
            assert all(k.startswith("text_model.") or k == "text_projection.weight" for k in keys), (d, enc)


def _rekey(folder, component, fn):
    from safetensors.torch import load_file, save_file

    f = folder / component / ("model.safetensors" if component.startswith("text") else
                              "diffusion_pytorch_model.safetensors")
    sd = load_file(str(f))
    save_file(fn(sd), str(f), metadata={"format": "pt"})


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_mis_keyed_text_encoder_is_an_error_naming_component_keys_and_versions(model_dir, tmp_path):
    """A text encoder whose keys the installed transformers does not map (here: an unknown prefix) loads with
    random weights and a warning in transformers; load_pipeline refuses it before any compute."""
    import diffusers
    import transformers

    from ablations import CheckpointMismatchError

    bad = _copy(model_dir, tmp_path / "miskeyed")
    _rekey(bad, "text_encoder", lambda sd: {"clip." + k: v for k, v in sd.items()})
    with pytest.raises(CheckpointMismatchError) as e:
        load_pipeline(str(bad), device="cpu")
    msg = str(e.value)
    assert "'text_encoder'" in msg and "CLIPTextModel" in msg
    assert "clip.text_model.embeddings.token_embedding.weight" in msg or "unexpected" in msg
    assert "missing" in msg and "embeddings.token_embedding.weight" in msg
    assert f"transformers {transformers.__version__}" in msg and f"diffusers {diffusers.__version__}" in msg
    assert "\n" not in msg  # one line


def test_tensor_left_at_its_initialisation_is_an_error(model_dir, tmp_path):
    """A UNet file with one tensor under a name nothing reads: the module keeps its random init for it."""
    from ablations import CheckpointMismatchError

    bad = _copy(model_dir, tmp_path / "renamed")
    _rekey(bad, "unet", lambda sd: {("conv_in.weight_old" if k == "conv_in.weight" else k): v for k, v in sd.items()})
    with pytest.raises(CheckpointMismatchError, match=r"'unet'.*conv_in\.weight"):
        load_pipeline(str(bad), device="cpu")


def test_verification_compares_values_not_only_names(model_dir):
    from foundation.checkpoints import CheckpointMismatchError, verify_pipeline

    pipe = load_pipeline(str(model_dir), device="cpu")
    w = pipe.unet.conv_out.bias
    kept = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    try:
        with pytest.raises(CheckpointMismatchError, match=r"1 of \d+ tensors differ.*conv_out\.bias"):
            verify_pipeline(pipe, model_dir)
    finally:
        with torch.no_grad():
            w.copy_(kept)
    assert verify_pipeline(pipe, model_dir)["unet"] > 0


def test_flat_transformers5_layout_and_legacy_names_are_matched(model_dir, tmp_path):
    """Layouts a loader converts on purpose verify: flat CLIP keys (transformers 5's own save, read by 5.x),
    legacy VAE attention names (query/key/value/proj_attn) and saved position_ids buffers."""
    import transformers

    from foundation.checkpoints import compare, weight_files

    pipe = load_pipeline(str(model_dir), device="cpu")
    flat = _copy(model_dir, tmp_path / "flat")
    _rekey(flat, "text_encoder", lambda sd: {
        **{k.removeprefix("text_model."): v for k, v in sd.items()},
        "embeddings.position_ids": torch.arange(77)[None]})
    r = compare(pipe.text_encoder, weight_files(flat / "text_encoder"))
    assert r["unexpected"] == [] and r["missing"] == []
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert r["differ"] == []
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def old_names(sd):
        out = {}
        for k, v in sd.items():
            for new, old in legacy.items():
                if ".attentions." in k and f".{new}." in k:
                    k = k.replace(f".{new}.", f".{old}.")
            out[k] = v
        return out

    _rekey(flat, "vae", old_names)
    from foundation.checkpoints import header_keys

    assert any(".query." in k for k in header_keys(flat / "vae" / "diffusion_pytorch_model.safetensors"))
    r = compare(pipe.vae, weight_files(flat / "vae"))
    assert r == {**r, "missing": [], "unexpected": [], "differ": []}
