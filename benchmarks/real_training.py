"""Peak memory and time of one training step of a real-size SD UNet (random weights, `tiny_sd.real_configs`), under
the job's training loop (`tiny_sd.training.train_unet`: AdamW, fp32 master weights), for each precision x gradient
checkpointing setting, each in a fresh subprocess (peak RSS on the CPU, `torch.cuda.max_memory_allocated` on a GPU),
plus the seconds per sampling UNet call at the same resolution.

    python benchmarks/real_training.py                                   # SD 1.5, 128 px, batch 1, CPU
    python benchmarks/real_training.py --arch sd15 --resolution 512 --batch 4 --device cuda
    python benchmarks/real_training.py --out benchmarks/results/real_training_cpu.txt

Weights, gradients and AdamW's two moments are 16 bytes per parameter in fp32 (13.8 GB for SD 1.5's 860M-parameter
UNet) whatever the precision; autocast and checkpointing cut the activations on top. Numbers taken beside other jobs
on this 2-core machine are slower, not larger: run it alone for the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]


def one(arch: str, resolution: int, batch: int, precision: str, checkpointing: bool, device: str, steps: int) -> dict:
    """Run in a fresh process: build the UNet, train `steps` steps, report peak memory and seconds per step."""
    import torch

    from ablations.conditioning import PromptEncoder
    from tiny_sd import real_configs
    from tiny_sd.training import LatentData, TrainConfig, train_unet

    pipe = real_configs.build_pipeline(arch, sample_size=resolution // 8, text_layers=1)
    pipe.to(device)
    unet = pipe.unet.float()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    data = LatentData(torch.randn(8, 4, resolution // 8, resolution // 8), None, ["a red circle"] * 8)
    enc = PromptEncoder(pipe, resolution)
    times = []
    recipe = dict(batch_size=batch, ema_decay=None, warmup=0, precision=precision)
    train_unet(unet, pipe.text_encoder, data, TrainConfig(steps=1, **recipe), progress=False, encode=enc,
               scheduler_config=pipe.scheduler.config, on_step=lambda s: times.append(time.perf_counter()))
    t0 = time.perf_counter()
    out = train_unet(unet, pipe.text_encoder, data, TrainConfig(steps=1 + steps, **recipe), progress=False,
                     encode=enc, scheduler_config=pipe.scheduler.config)
    per_step = (time.perf_counter() - t0) / (1 + steps)  # a fresh optimizer each call: 1 + steps steps
    unet.eval()
    x = torch.randn(2 * batch, 4, resolution // 8, resolution // 8, device=device)
    cond, _ = enc(["a red circle"] * (2 * batch))
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                         enabled=precision == "bfloat16"):
        unet(x, torch.tensor([500] * (2 * batch), device=device), cond.to(device))
        t1 = time.perf_counter()
        unet(x, torch.tensor([500] * (2 * batch), device=device), cond.to(device))
        call = time.perf_counter() - t1
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        where = "GPU max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
        where = "process peak RSS"
    return {"arch": arch, "resolution": resolution, "batch": batch, "precision": precision,
            "checkpointing": checkpointing, "device": device, "peak_GiB": round(peak, 2), "memory": where,
            "s_per_step": round(per_step, 2), "s_per_cfg_call": round(call, 2), "loss_finite": all(
                v == v for v in out["loss"]), "unet_params": sum(p.numel() for p in unet.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        precision, ck = a.one.split(",")
        print(json.dumps(one(a.arch, a.resolution, a.batch, precision, ck == "1", a.device, a.steps)))
        return
    rows = []
    for precision, ck in SETTINGS:
        cmd = [sys.executable, __file__, "--arch", a.arch, "--resolution", str(a.resolution), "--batch", str(a.batch),
               "--device", a.device, "--steps", str(a.steps), "--one", f"{precision},{int(ck)}"]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    lines = [f"# {a.arch} UNet training step, {a.resolution} px, batch {a.batch}, {a.device}, load average {load:.1f}",
             "| precision | grad. checkpointing | peak memory (GiB) | s / step | s / sampling call (CFG pair) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {'yes' if r['checkpointing'] else 'no'} | {r['peak_GiB']} "
                     f"({r['memory']}) | {r['s_per_step']} | {r['s_per_cfg_call']} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
