"""Wall time of every probe and every surgery op on SD 1.5, SD 2.1 and SDXL (random weights, real configs from
`tiny_sd.real_configs`), through the public API and through the CLIs, each measured alone (one after the other, in
one process per architecture for the API, a fresh subprocess per CLI call).

    python benchmarks/real_architectures.py                                  # all three, results to stdout
    python benchmarks/real_architectures.py --archs sd15 --n-timesteps 2      # quicker
    python benchmarks/real_architectures.py --out benchmarks/results/real_architectures_cpu.txt

Sizes as in tests/test_real_architectures.py: SD 1.5 / 2.1 at full width with 64 px images (latent 8), SDXL at half
width (160/320/640, depths 1/2/10, heads 5/10/20, both real text encoders) with 128 px images (latent 16).
For the timestep and skips probes the script also counts the UNet calls and the time spent inside them (a forward
pre/post hook pair on the UNet), and times the batched interventions (`batch=64`, several interventions per UNet
call) beside the shipped one-call-per-intervention path, with the largest difference between their numbers.
The load average is printed with every measurement: on this 2-core machine a second busy process makes two torch
threads wait at every parallel region (a UNet call of SD 2.1 at half width went from 0.2 s to 2 s), so numbers taken
next to other jobs are not comparable; `--threads 1` is steadier there.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probes import inputs, runner  # noqa: E402
from probes.attention_grids import heatmap_side  # noqa: E402
from tiny_sd import real_configs  # noqa: E402

PROMPT = "a red circle left of a blue square"
LATENT = {"sd15": 8, "sd21": 8, "sdxl": 16}
ABLATION_OPS = ("none", "norms", "skips", "freeu", "depth", "attention", "blocks")
EXTRA_SPECS = {
    "norms rmsnorm (attention)": dict(op="norms", kind="rmsnorm", targets=["attention"]),
    "norms groupnorm G=8 (resnet)": dict(op="norms", kind="groupnorm", groups=8, targets=["resnet"]),
    "skips mean (level 0)": dict(op="skips", mode="mean", levels=[0]),
    "depth k=1": dict(op="depth", k=1),
    "attention attn1": dict(op="attention", which=["attn1"]),
    "blocks pairs+mid (BK-SDM-Small)": dict(op="blocks", remove=["pairs", "mid"]),
}

PROBE_RUNS = ("attention", "timestep", "timestep-batched", "skips", "skips-batched", "attribution")
_lines: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    _lines.append(line)


def load() -> str:
    return "load %.2f" % os.getloadavg()[0]


class UNetTimer(contextlib.AbstractContextManager):
    """Count the UNet's calls and the wall time spent inside them (outermost forward only)."""

    def __init__(self, unet):
        self.unet, self.calls, self.seconds, self._t0 = unet, 0, 0.0, None

    def __enter__(self):
        self._h = [self.unet.register_forward_pre_hook(self._pre), self.unet.register_forward_hook(self._post)]
        return self

    def _pre(self, *a):
        self._t0 = time.perf_counter()

    def _post(self, *a):
        self.calls += 1
        self.seconds += time.perf_counter() - self._t0

    def __exit__(self, *exc):
        for h in self._h:
            h.remove()
        return False


def probe_cfg(out, probe, steps: int) -> dict:
    return dict(model=dict(name="real", path="unused", device="cpu", dtype="float32"), prompt=PROMPT, prompts=None,
                seed=0, sample_steps=steps, guidance_scale=7.5, height=None, width=None, timestep_bins=2, out=str(out),
                probe=probe)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def unet_call_times(pipe, lat: int) -> None:
    cond1 = inputs.conditioning(pipe, [PROMPT], lat * 8, lat * 8)
    for batch in (1, 2, 16):
        cond = {k: (v.repeat(batch, 1, 1) if torch.is_tensor(v) else {a: b.repeat(batch, 1) for a, b in v.items()})
                for k, v in cond1.items()}
        x = torch.randn(batch, 4, lat, lat)
        with torch.no_grad():
            pipe.unet(x, 500, **cond)
            ts = [timed(lambda: pipe.unet(x, 500, **cond))[0] for _ in range(3)]
        emit(f"  UNet call, batch {batch:2d}: median {np.median(ts):.3f} s  ({np.median(ts) / batch:.3f} s per row)  "
             f"{load()}")


def run_probes(pipe, arch: str, work: Path, steps: int, n_timesteps: int, only=None) -> None:
    side = heatmap_side(pipe.unet, LATENT[arch])
    plan = [("attention", dict(name="attention", self_attention=[side], mean_heads=False), None),
            ("timestep", dict(name="timestep", n_timesteps=n_timesteps, swap_shift=500), 1),
            ("timestep, batched x64", dict(name="timestep", n_timesteps=n_timesteps, swap_shift=500), 64),
            ("skips", dict(name="skips", n_timesteps=n_timesteps, cutoff=0.25, scale=0.5), 1),
            ("skips, batched x64", dict(name="skips", n_timesteps=n_timesteps, cutoff=0.25, scale=0.5), 64),
            ("attribution", dict(name="attribution", timestep=500, n_steps=16, skip=None), None)]
    values = {}
    for label, probe, batch in plan:
        if only and label.replace(", batched x64", "-batched") not in only:
            continue
        if batch is not None:
            probe = {**probe, "batch": batch}  # probe.batch: interventions per UNet call
        out = work / label.replace(" ", "_").replace(",", "")
        gc.collect()
        before = load()
        with UNetTimer(pipe.unet) as ut:
            secs, res = timed(lambda: runner.run(probe_cfg(out, probe, steps), pipe=pipe))
        extra = ""
        if probe["name"] in ("timestep", "skips"):
            csv = pd.read_csv(out / f"{probe['name']}.csv")
            key = "block" if probe["name"] == "timestep" else "skip"
            values[label] = csv.sort_values([key, "timestep", "metric"]).value.to_numpy()
            base = values.get(probe["name"])
            if batch and batch > 1 and base is not None:
                extra = f"  max |value - one call each| {np.abs(values[label] - base).max():.1e}"
        if probe["name"] == "attention":
            extra = f"  {len(res['layers'])} cross-attention layers, self-attention on {side}x{side}"
        if probe["name"] == "attribution":
            extra = f"  IG completeness gap {res['ig_delta']:.1e}, 16 steps"
        emit(f"  probe {label:24s} {secs:8.1f} s   UNet calls {ut.calls:4d}, {ut.seconds:7.1f} s inside "
             f"({100 * ut.seconds / secs:3.0f}%){extra}   [{before} -> {load()}]")


def run_surgery(pipe, arch: str) -> None:
    from omegaconf import OmegaConf

    from ablations import surgery

    files = sorted((ROOT / "configs/ablation").glob("*.yaml"))
    specs = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in files}
    specs.update(EXTRA_SPECS)
    lat = LATENT[arch]
    cond = inputs.conditioning(pipe, [PROMPT], lat * 8, lat * 8)
    x = torch.randn(1, 4, lat, lat, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = pipe.unet(x, 500, **cond).sample
    for name, spec in specs.items():
        gc.collect()
        before = load()
        t_apply, new = timed(lambda: surgery.apply(pipe.unet, spec))
        with torch.no_grad():
            t_call, out = timed(lambda: new.eval()(x, 500, **cond).sample)
        d = float((out - ref).norm() / ref.norm())
        n = sum(p.numel() for p in new.parameters())
        emit(f"  op {name:32s} apply {t_apply:6.2f} s   one UNet call {t_call:6.2f} s   ||d eps||/||eps|| {d:.3f}   "
             f"params {n / 1e6:7.1f}M   [{before}]")
        del new, out


def cli(args: list[str], timeout: int = 3600) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    return time.perf_counter() - t, r


def run_clis(folder: Path, work: Path, steps: int) -> None:
    base = [f"model.path={folder}", "model.device=cpu", "model.dtype=float32", f"sample_steps={steps}",
            f"prompt={PROMPT}", "timestep_bins=2"]
    for probe, extra in (("attention", []), ("timestep", ["probe.n_timesteps=1"]), ("skips", ["probe.n_timesteps=1"]),
                         ("attribution", ["probe.n_steps=4"])):
        before = load()
        secs, r = cli(["probes", probe, *base, *extra, f"out={work / ('cli_' + probe)}"])
        status = "ok" if r.returncode == 0 else f"FAILED rc={r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
        emit(f"  CLI python -m probes {probe:12s} {secs:7.1f} s  {status}   [{before} -> {load()}]")
    sweep = work / "sweep"
    before = load()
    secs, r = cli(["ablations", "-m", f"model.path={folder}", "model.device=cpu", "model.dtype=float32",
                   f"ablation={','.join(ABLATION_OPS)}", "budget=smoke", "budget.val_data=2", "budget.n_images=1",
                   "budget.sample_steps=1", "budget.sample_batch=1", "budget.grid_images=1", "image_metrics=false",
                   "progress=false", f"hydra.sweep.dir={sweep}"])
    emit(f"  CLI python -m ablations -m ablation={','.join(ABLATION_OPS)} (budget=smoke, 2 val latents, 1 image x 1 "
         f"step): {secs:.1f} s, rc={r.returncode}   [{before} -> {load()}]")
    for op in ABLATION_OPS:
        p = sweep / "jobs" / f"{op}__seed0" / "result.json"
        if not p.exists():
            emit(f"    job {op:10s} no result.json")
            continue
        rec = json.loads(p.read_text())
        what = (f"ok, denoising loss {rec['metrics']['denoising_loss']:.4f}" if rec["status"] == "ok"
                else f"FAILED: {rec['error']}")
        emit(f"    job {op:10s} {rec['seconds']:6.1f} s  {what}")


def profile_call(pipe, lat: int, batch: int, rows: int = 6) -> None:
    """Top ops of one UNet call (torch.profiler, self CPU time): what a timestep/skips intervention costs."""
    from torch.profiler import ProfilerActivity, profile

    cond = inputs.conditioning(pipe, [PROMPT] * batch, lat * 8, lat * 8)
    x = torch.randn(batch, 4, lat, lat)
    with torch.no_grad():
        pipe.unet(x, 500, **cond)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe.unet(x, 500, **cond)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    emit(f"  torch.profiler, one UNet call at batch {batch} (self CPU time):")
    for line in table.splitlines():
        if line.strip() and not line.startswith("-"):
            emit("    " + line.rstrip())


def bench(arch: str, args) -> None:
    from foundation.checkpoints import save_pipeline, verify_pipeline

    emit(f"# {arch}  ({load()})")
    t_build, pipe = timed(lambda: real_configs.build_pipeline(arch, width_scale=args.width_scale,
                                                              sample_size=LATENT[arch], text_layers=args.text_layers))
    d = real_configs.describe(pipe)
    emit(f"  build {t_build:.1f} s: UNet {d['unet_params'] / 1e6:.1f}M params {d['block_out_channels']} heads "
         f"{d['attention_head_dim']} depth {d['transformer_layers_per_block']} ctx {d['cross_attention_dim']} "
         f"linear_proj {d['use_linear_projection']}; text {[round(n / 1e6, 1) for n in d['text_params']]}M params, "
         f"{d['text_layers']} layers; VAE {d['vae_params'] / 1e6:.1f}M; {d['scheduler']} ({d['prediction_type']}); "
         f"latent {LATENT[arch]} ({LATENT[arch] * 8} px)")
    with tempfile.TemporaryDirectory(prefix=f"real_{arch}_") as tmp:
        work = Path(tmp)
        t_save, folder = timed(lambda: save_pipeline(pipe, work / "pipe"))
        t_verify, checked = timed(lambda: verify_pipeline(pipe, folder, label=arch))
        emit(f"  save_pipeline {t_save:.1f} s, verify_pipeline {t_verify:.1f} s ({sum(checked.values())} tensors)")
        unet_call_times(pipe, LATENT[arch])
        if "probes" in args.parts:
            if arch == "sd15":
                profile_call(pipe, LATENT[arch], 1)
                profile_call(pipe, LATENT[arch], 45)
            run_probes(pipe, arch, work, args.steps, args.n_timesteps, args.probes)
        if "surgery" in args.parts:
            run_surgery(pipe, arch)
        if "cli" in args.parts:
            del pipe
            gc.collect()  # the CLI subprocess loads its own copy
            run_clis(folder, work, args.steps)
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(real_configs.ARCHS), choices=real_configs.ARCHS)
    ap.add_argument("--steps", type=int, default=2, help="sampling steps of each probe run")
    ap.add_argument("--n-timesteps", type=int, default=10, help="timestep/skips grid (the CLI's default: 10)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--parts", nargs="+", default=["probes", "surgery", "cli"], choices=["probes", "surgery", "cli"],
                    help="what to time (the build, save and bare UNet calls always run)")
    ap.add_argument("--probes", nargs="+", choices=PROBE_RUNS, help="only these probe runs (default: all)")
    ap.add_argument("--width-scale", type=float, help="UNet width factor (default: real_configs' choice, SDXL 0.5)")
    ap.add_argument("--text-layers", type=int, help="cap the text encoders' depth (default: the real depths)")
    ap.add_argument("--out", type=Path, help="also write the lines here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the CLI subprocesses too
    import diffusers
    import transformers

    emit(f"# real architectures, random weights, CPU ({os.cpu_count()} cores), torch {torch.__version__} threads "
         f"{torch.get_num_threads()}, diffusers {diffusers.__version__}, transformers {transformers.__version__}; "
         f"{args.steps} sampling steps, {args.n_timesteps} re-noised timesteps, CFG 7.5, prompt {PROMPT!r}")
    t0 = time.perf_counter()
    for arch in args.archs:
        bench(arch, args)
    emit(f"# total {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text("\n".join(_lines) + "\n")


if __name__ == "__main__":
    main()
