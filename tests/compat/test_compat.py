"""The admitted version range is tested: a compatibility subset run in `.venv-compat` (the far corner of
pyproject's range: the oldest admitted diffusers with the newest transformers 4.x), compared with the main venv's
reference outputs (tests/compat/reference.py, written by the main venv before this runs).

Run by `bash .ci/compat`, which sets
- UNET_LAB_COMPAT_REF: the folder reference.py wrote;
- UNET_LAB_COMPAT_PINS: the pins the compat venv was built with ("diffusers==0.30.0 transformers==4.57.6 ..."),
  checked first so that a resolver that quietly picked other versions fails the stage instead of testing them.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

import reference

REF = Path(os.environ["UNET_LAB_COMPAT_REF"])
# Max |difference| allowed between the two venvs' attention heatmaps (each word's map is normalised to max 1).
# Measured: 0.0 between the main venv (diffusers 0.42.1, transformers 5.24.0) and the far corner (diffusers
# 0.30.0, transformers 4.57.6), both on torch 2.13.0; the same main venv with 1 instead of 2 torch threads (the
# same libraries, float reductions merely reordered) differs by 1.8e-5. 1e-4 is ~5x that reordering noise and
# 4,000x below the 0.4 threshold the heatmap mIoU is scored at, so it passes any float reordering and fails
# any change in what is computed (a different softmax scale, a missing token or layer moves maps by >= 1e-2).
HEATMAP_ATOL = float(os.environ.get("UNET_LAB_COMPAT_HEATMAP_ATOL", "1e-4"))


def _ref_json(name: str):
    return json.loads((REF / name).read_text())


@pytest.fixture(scope="module")
def pipe():
    from ablations import load_pipeline

    return load_pipeline("tiny_sd", device="cpu")


def test_installed_versions_are_the_pinned_far_corner():
    pins = os.environ.get("UNET_LAB_COMPAT_PINS", "").split()
    assert pins, "UNET_LAB_COMPAT_PINS is not set (run this through .ci/compat)"
    for pin in pins:
        name, want = pin.split("==")
        have = version(name)
        assert have.split("+")[0] == want, f"{name} {have} is installed, the stage pins {want}"
    ref = _ref_json("versions.json")
    assert ref["prefix"] != sys.prefix, "the reference was written by this venv: nothing is being compared"
    print(f"compat venv: {reference.versions()}\nmain venv (reference): {ref}")


def test_tiny_sd_loads_verified(pipe):
    """load_pipeline verified every tensor already (it raises CheckpointMismatchError otherwise); checked again
    here so the counts are printed, and the text encoder's module layout is the one this transformers uses."""
    import transformers

    from foundation.checkpoints import verify_pipeline
    from foundation.loading import TINY_SD_DIR

    counts = verify_pipeline(pipe, TINY_SD_DIR, label="tiny_sd")
    assert {"unet", "vae", "text_encoder"} <= set(counts), counts
    assert all(n > 0 for n in counts.values()), counts
    keys = list(pipe.text_encoder.state_dict())
    if int(transformers.__version__.split(".")[0]) < 5:  # 4.x keeps the text_model submodule
        assert all(k.startswith("text_model.") for k in keys), keys[:4]
    print(f"verified tensors per component: {counts}; text encoder keys e.g. {keys[:2]}")


def test_flat_text_encoder_layout_is_never_silently_random(tmp_path, pipe):
    """A text encoder saved flat (transformers 5's own layout, no `text_model.`): transformers 4 leaves every weight
    at its random initialisation. Loading must then raise CheckpointMismatchError, or (a transformers that reads the
    layout) give exactly the canonical weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ablations import CheckpointMismatchError, load_pipeline
    from foundation.loading import TINY_SD_DIR

    flat = tmp_path / "flat"
    shutil.copytree(TINY_SD_DIR, flat)
    f = flat / "text_encoder" / "model.safetensors"
    sd = load_file(str(f))
    save_file({k.removeprefix("text_model."): v for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    try:
        other = load_pipeline(str(flat), device="cpu")
    except CheckpointMismatchError as e:
        assert "'text_encoder'" in str(e) and "differ" in str(e), str(e)
        print(f"rejected as it must be: {str(e)[:300]}")
        return
    a, b = pipe.text_encoder.state_dict(), other.text_encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_unet_tensor_is_never_silently_random(tmp_path):
    """A UNet file with one tensor under a name nothing reads. diffusers 0.42 loads it with that tensor at its
    initialisation and verification raises CheckpointMismatchError; diffusers 0.30 refuses in from_pretrained
    ("... because the following keys are missing"), which load_pipeline reports as the same error. Either way the
    load fails with CheckpointMismatchError naming the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ablations import CheckpointMismatchError, load_pipeline
    from foundation.loading import TINY_SD_DIR

    bad = tmp_path / "renamed"
    shutil.copytree(TINY_SD_DIR, bad)
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    save_file({("conv_in.weight_old" if k == "conv_in.weight" else k): v for k, v in sd.items()}, str(f),
              metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=r"conv_in\.weight") as e:
        load_pipeline(str(bad), device="cpu")
    print(f"{e.type.__name__}: {str(e.value)[:300]}")


def test_uncached_hub_model_is_a_clear_error(tmp_path, monkeypatch):
    """The hub-id path of resolve_path (sd15 etc.) with this huggingface_hub: offline and not cached, one
    ModelNotFoundError saying where it looked (not an ImportError from a hub module this version lacks)."""
    from ablations import ModelNotFoundError
    from foundation.loading import resolve_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="Could not find the weights"):
        resolve_path("sd15")


def test_colours_drawn_right(pipe):
    images, scores = reference.colour_samples(pipe)
    ref = _ref_json("colours.json")
    acc, ref_acc = reference.colour_accuracy(scores), ref["colour_accuracy"]
    ok = [s["objects"][0]["colour_ok"] for s in scores]
    ref_ok = [s["objects"][0]["colour_ok"] for s in ref["scores"]]
    diff = float(np.abs(images - np.load(REF / "colours.npz")["images"]).max())
    print(f"colour accuracy: compat {acc:.3f}, main {ref_acc:.3f}; max |image difference| {diff:.2e} (0-1 scale)")
    assert acc >= 7 / 8, [(s["prompt"], s["objects"]) for s in scores if not s["objects"][0]["colour_ok"]]
    assert sum(a != b for a, b in zip(ok, ref_ok)) <= 1, list(zip(reference.COLOUR_PROMPTS, ok, ref_ok))


def test_attention_maps_equal_the_main_venv(tmp_path):
    got = np.load(reference.run_attention(sys.executable, tmp_path / "attention"))
    want = np.load(REF / "attention" / "heatmaps.npz")
    assert list(got.files) == list(want.files), (got.files, want.files)
    deltas = {}
    for w in want.files:
        assert got[w].shape == want[w].shape, (w, got[w].shape, want[w].shape)
        assert np.isfinite(got[w]).all(), w
        deltas[w] = float(np.abs(got[w].astype(np.float64) - want[w]).max())
    print(f"heatmap max |delta| per word (tolerance {HEATMAP_ATOL:g}): {deltas}")
    assert max(deltas.values()) <= HEATMAP_ATOL, deltas


# ---------------------------------------------------------------------------------------------------- surgery
SURGERY = {
    "norms": {"op": "norms", "kind": "rmsnorm"},
    "skips": {"op": "skips", "mode": "scale", "scale": 0.5},
    "freeu": {"op": "freeu", "b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2},
    "attention": {"op": "attention", "which": ["attn2"]},  # set_attn_processor
}


@pytest.fixture(scope="module")
def unet_inputs(pipe):
    cfg = pipe.unet.config
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g), torch.tensor([10, 500]),
            torch.randn(2, pipe.tokenizer.model_max_length, cfg.cross_attention_dim, generator=g))


@pytest.mark.parametrize("name", list(SURGERY))
def test_surgery_on_a_copy(pipe, unet_inputs, name):
    from ablations import surgery

    base = pipe.unet.eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    types = [type(m) for m in base.modules()]
    with torch.no_grad():
        base_out = base(*unet_inputs).sample
        new = surgery.apply(base, SURGERY[name]).eval()
        out = new(*unet_inputs).sample
        again = base(*unet_inputs).sample
    assert new is not base
    assert out.shape == base_out.shape == unet_inputs[0].shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, base_out), f"{name} changed nothing"
    assert torch.equal(again, base_out), "the base UNet's output changed"
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert types == [type(m) for m in base.modules()], "the base UNet's modules changed"
    if name == "freeu":  # ours must be this diffusers' own FreeU for nonzero factors
        ref = copy.deepcopy(base)
        ref.enable_freeu(**{k: v for k, v in SURGERY[name].items() if k != "op"})
        with torch.no_grad():
            want = ref(*unet_inputs).sample
        assert torch.allclose(out, want, atol=1e-5), float((out - want).abs().max())


# ---------------------------------------------------------------------------------------------------- sweep
def test_norms_smoke_sweep_all_ok(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    p = subprocess.run([sys.executable, "-m", "ablations", "sweep=norms", "budget=smoke", "progress=false",
                        f"hydra.sweep.dir={tmp_path}"], cwd=reference.ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = {}
    for f in (tmp_path / "jobs").glob("*/result.json"):
        r = json.loads(f.read_text())
        res[(r["variant"], r["seed"])] = r
    planned = json.loads((tmp_path / "expected_jobs.json").read_text())["jobs"]
    assert {(j["variant"], j["seed"]) for j in planned} == set(res) and len(res) == 14
    assert all(r["status"] == "ok" for r in res.values()), {k: r.get("error") for k, r in res.items()}
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "results.csv")) == 14
    assert (tmp_path / "report" / "index.html").exists()
