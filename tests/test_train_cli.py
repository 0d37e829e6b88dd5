"""`python -m tiny_sd.train`: stages run, record provenance, and resume from their checkpoints."""

import json
import subprocess
import sys

import torch


def _train(work, *args):
    cmd = [sys.executable, "-m", "tiny_sd.train", "--work", str(work), "--threads", "1", "--stages", "clip,vae",
           "--clip-batch", "8", "--vae-batch", "2", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((work / "record.json").read_text())


def test_stages_record_and_resume(tmp_path):
    rec = _train(tmp_path, "--clip-steps", "2", "--vae-steps", "2")
    assert rec["clip_steps"] == 2 and rec["vae_steps"] == 2 and rec["config"]["seed"] == 1234
    assert (tmp_path / "clip_final" / "config.json").exists() and (tmp_path / "vae_final" / "config.json").exists()
    assert 0 < rec["vae_scaling_factor"] < 100
    # a longer schedule continues from the saved step instead of starting again
    rec = _train(tmp_path, "--clip-steps", "3", "--vae-steps", "3")
    assert rec["clip_steps"] == 3 and rec["vae_steps"] == 3
    assert torch.load(tmp_path / "vae" / "state.pt", weights_only=False)["step"] == 3
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    assert "circle</w>" in vocab and "<|startoftext|>" in vocab
