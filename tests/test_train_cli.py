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


def test_warm_start_continues_the_shipped_unet_and_records_its_history(tmp_path):
    """`--stages unet,export --warm-start --text-lr ...`: starts from the shipped UNet and
    conditioner, exports a loadable pipeline with both fine-tuned, whose record adds this run to the shipped training
    history (steps, context, schedule, joint text training) and names the command."""
    import shutil

    from foundation.loading import TINY_SD_DIR

    out = tmp_path / "pipeline"
    shutil.copytree(TINY_SD_DIR, out)
    shipped = json.loads((out / "train_record.json").read_text())
    cmd = [sys.executable, "-m", "tiny_sd.train", "--work", str(tmp_path / "work"), "--out", str(out), "--threads",
           "1", "--stages", "unet,export", "--warm-start", "--unet-steps", "2", "--unet-batch", "4", "--unet-data",
           "16", "--unet-lr", "1e-4", "--unet-lr-final", "1e-5", "--text-lr", "1e-3"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads((out / "train_record.json").read_text())
    before = shipped["unet_total_steps"]
    assert rec["unet_steps_before_warm_start"] == before and rec["unet_total_steps"] == before + 2
    assert rec["unet_history"][:-1] == shipped["unet_history"]
    assert rec["unet_history"][-1] == (f"steps {before}-{before + 2}: 16-token context, 16 training images, "
                                       "warm start, cosine 0.0001 -> 1e-05, text encoder trained jointly "
                                       "(peak LR 0.001)")
    assert rec["unet_command"].startswith("python -m tiny_sd.train --work") and "--warm-start" in rec["unet_command"]
    assert rec["tokenizer_model_max_length"] == 16 and rec["clip_steps"] == shipped["clip_steps"]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    # the exported UNet (EMA) is the shipped one after two warm-up steps, not a fresh initialisation
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(TINY_SD_DIR / "unet").state_dict()
    b = pipe.unet.state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff < 0.01
    # the conditioner exported is the one trained with this UNet, not the shipped one
    from transformers import CLIPTextModel

    shipped_te = CLIPTextModel.from_pretrained(TINY_SD_DIR / "text_encoder").float().state_dict()
    trained_te = CLIPTextModel.from_pretrained(tmp_path / "work" / "text_encoder_final").state_dict()
    assert 0 < max(float((shipped_te[k] - trained_te[k]).abs().max()) for k in shipped_te) < 0.05
    for k, v in pipe.text_encoder.state_dict().items():  # exported in fp16
        torch.testing.assert_close(v, trained_te[k].to(v.dtype), msg=k)
