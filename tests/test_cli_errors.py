"""Every CLI answers bad input with one message on stderr and exit code 2, before sampling, never a traceback.

Driven in subprocesses exactly as a user types them (`python -m probes ...`, `python -m ablations ...`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=180)


def assert_refused(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ") and lines[-1] == "Nothing was computed.", p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


PROBE_CASES = {
    "unknown word": (["attention", "prompt=a red hexagon"], ["words ['hexagon'] are not in the shapes-world"]),
    "size": (["attention", "height=50"], ["height=50 is not supported", "multiple of 16"]),
    "device": (["attention", "model.device=cuda"], ["CUDA is not available"]),
    "unknown device": (["attention", "model.device=tpu"], ["unknown device 'tpu'"]),
    "empty prompt": (["attention", "prompt="], ["is empty"]),
    "empty prompt list": (["attention", "prompts=[]"], ["non-empty list of prompts"]),
    "sample_steps": (["attention", "sample_steps=0"], ["sample_steps=0", "integer >= 1"]),
    "guidance nan": (["attention", "guidance_scale=nan"], ["guidance_scale=nan", "finite"]),
    "guidance negative": (["attention", "guidance_scale=-1"], ["guidance_scale=-1"]),
    "bins": (["attention", "timestep_bins=0"], ["timestep_bins=0"]),
    "unknown option": (["attention", "probe.foo=1"], ["probe.foo"]),
    "refine": (["attention", "probe.refine=-1"], ["probe.refine=-1"]),
    "self-attention grid": (["attention", "probe.self_attention=[5]"], ["probe.self_attention=[5]", "[16, 8, 4]"]),
    "skip name": (["attribution", "probe.skip=nope"], ["no skip named 'nope'", "up_blocks.2.resnets.2"]),
    "attribution timestep": (["attribution", "probe.timestep=1000"], ["probe.timestep=1000", "[0, 999]"]),
    "taus": (["evaluate", "probe.taus=[0.5]"], ["must include 0.4"]),
    "n_timesteps": (["skips", "probe.n_timesteps=0"], ["probe.n_timesteps=0"]),
    "cutoff": (["skips", "probe.cutoff=0.7"], ["probe.cutoff=0.7"]),
    "unknown probe": (["heatmap"], ["unknown probe 'heatmap'", "attention, timestep"]),
    "unknown model": (["attention", "model=sd9"], ["unknown model='sd9'", "sd15, sd21, sdxl, tiny_sd"]),
    "causal two words": (["causal", "prompt=a red circle", "counterfactual=a blue square"],
                         ["must differ in exactly one word", "['red', 'circle'] -> ['blue', 'square']"]),
    "causal no counterfactual": (["causal", "prompt=a red circle"], ["mode=patch needs probe.counterfactual"]),
    "causal word": (["causal", "prompt=a red circle", "mode=knockout", "word=green"],
                    ["word='green' is not in the prompt 'a red circle'"]),
    "causal site": (["causal", "prompt=a red circle", "counterfactual=a blue circle", "sites=[down.9.attn.0]"],
                    ["probe.sites: unknown sites ['down.9.attn.0']", "attn2:down_blocks.0"]),
    "causal mode": (["causal", "mode=trace"], ["probe.mode='trace'", "patch, restore, knockout"]),
    "causal swap": (["causal", "prompt=a red circle", "mode=swap", "word=red"], ["mode=swap needs other="]),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_probes_cli_refuses_bad_input_in_one_line(case, tmp_path):
    args, needles = PROBE_CASES[case]
    out = tmp_path / "out"
    p = cli("probes", *args, f"out={out}", cwd=tmp_path)
    assert_refused(p, *needles)
    assert not (out / "image.png").exists() and not (out / "result.json").exists()


ABLATION_CASES = {
    "unknown sweep": (["sweep=nope"], ["unknown sweep='nope'", "blocks, depth, freeu, norms, seeds, skips"]),
    "unknown model": (["model=sd9", "budget=smoke"], ["unknown model='sd9'", "tiny_sd"]),
    "unknown option": (["budget=smoke", "probe.foo=1"], ["probe.foo"]),
    "bad budget": (["budget=smoke", "budget.n_images=0"], ["budget.n_images must be an integer >= 2"]),
}


@pytest.mark.parametrize("case", list(ABLATION_CASES))
def test_ablations_cli_refuses_bad_input_in_one_line(case, tmp_path):
    args, needles = ABLATION_CASES[case]
    p = cli("ablations", *args, cwd=tmp_path)
    assert_refused(p, *needles)
    assert not any(tmp_path.rglob("result.json"))


def test_probes_cli_prints_a_short_summary_not_its_result_json(tmp_path):
    out = tmp_path / "out"
    p = cli("probes", "attention", "sample_steps=2", f"out={out}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) <= 4, p.stdout
    assert lines[0].startswith(f"attention: wrote ") and str(out) in lines[0]
    assert "heatmaps.npz words: a, red, circle, left, of, blue, square" in p.stdout
    assert (out / "result.json").exists() and "probe_memory_bytes" not in p.stdout
    assert p.stderr.strip() == "", p.stderr  # no third-party chatter (fontTools, diffusers, transformers)
