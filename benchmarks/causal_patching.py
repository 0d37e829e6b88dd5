"""Activation patching, batched vs one run per configuration, measured side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/causal_patching.py                 # tiny_sd on the CPU
    python benchmarks/causal_patching.py --device cuda --sd15              # + an SD1.5-architecture UNet on a GPU

Batched: `probes.causal.patch_runs`, many (site, bin) configurations as batch rows of one pipeline call over one
cached source run. Naive: the loop a user writes by hand with hooks, one full sampling run per configuration (the
source re-run each time, one patch, batch 1). Both patch the same configurations of the same pair and must give the
same latents (checked); rounds alternate so a busy machine slows both alike. Memory: the source cache's bytes and,
on a GPU, the peak allocated memory of each approach. Prints configurations per second and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from foundation.loading import load_pipeline
from probes import causal
from probes.patching import Patcher, SourceCache

PROMPT, COUNTER = "a red circle left of a blue square", "a green circle left of a blue square"


def naive(pipe, item, sites, configs, run) -> torch.Tensor:
    """One source run and one patched run per configuration."""
    out = []
    for c in configs:
        cache = SourceCache(pipe, sites, timestep_bins=run["n_bins"])
        causal._sample(pipe, [cache], [item.source], [item.seed], run)
        plan = causal.plan([c], run["n_bins"])
        probes = [Patcher(pipe, cache, plan, [0], timestep_bins=run["n_bins"])] if plan else []
        out.append(causal._sample(pipe, probes, [item.target], [item.seed], run))
    return torch.cat(out)


def measure(pipe, label: str, n_naive: int, batch: int, steps: int, rounds: int, device: str) -> None:
    item = causal.build_items("patch", [PROMPT], counterfactuals=[COUNTER])[0]
    sites = causal.select_sites(pipe.unet, ["time_embedding", "resnet", "transformer", "attn2", "skip"])
    every = causal.configurations(sites, 5)
    subset = every[:: max(1, len(every) // n_naive)][:n_naive]
    run = dict(n_bins=5, sample_steps=steps, guidance_scale=7.5, height=None, width=None, seed=0)
    times = {"batched (subset)": [], "naive (subset)": [], "batched (full grid)": []}
    peaks = {}
    for _ in range(rounds):
        for name in times:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            if name.startswith("naive"):
                z_naive = naive(pipe, item, sites, subset, run)
            else:
                configs = subset if "subset" in name else every
                _, z = causal.patch_runs(pipe, [item], sites, configs, run, batch=batch, progress=False)
                if "subset" in name:
                    z_batched = z[0]
            if device == "cuda":
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated()
            times[name].append(time.perf_counter() - t0)
    gap = float((z_batched - z_naive).abs().max())
    cache = SourceCache(pipe, sites, timestep_bins=5)
    causal._sample(pipe, [cache], [item.source], [item.seed], run)
    print(f"\n{label}: {len(sites)} sites x (5 bins + all) + groups = {len(every)} configurations, {steps} steps, "
          f"CFG 7.5, batch {batch} rows; naive loop on {len(subset)} of them; {rounds} rounds, median")
    rate = {}
    for name, ts in times.items():
        n = len(every) if "full" in name else len(subset)
        med = sorted(ts)[len(ts) // 2]
        rate[name] = n / med
        mem = f", peak {peaks[name] / 2**20:.0f} MiB" if name in peaks else ""
        print(f"  {name:22s} {med:8.2f} s  {rate[name]:7.2f} configurations/s{mem}")
    print(f"  batched / naive, same configurations: {rate['batched (subset)'] / rate['naive (subset)']:.1f}x "
          f"(max |latent difference| {gap:.2e})")
    print(f"  full grid: {len(every) / rate['batched (full grid)']:.0f} s per prompt pair; source cache "
          f"{cache.nbytes() / 2**20:.1f} MiB per image ({steps} UNet calls x {len(sites)} sites)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--naive", type=int, default=12, help="configurations the naive loop runs")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sd15", action="store_true", help="also an SD1.5-architecture pipeline (random weights) at 512 px")
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = load_pipeline("tiny_sd", device=args.device, dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    measure(pipe, "tiny_sd", args.naive, args.batch, args.steps, args.rounds, args.device)
    if args.sd15:
        from tiny_sd.testing import random_sd15_pipeline

        big = random_sd15_pipeline(resolution=512).to(args.device, torch.float16 if args.device == "cuda" else torch.float32)
        big.set_progress_bar_config(disable=True)
        measure(big, "SD1.5 architecture, 512 px", args.naive, max(1, args.batch // 8), args.steps, args.rounds,
                args.device)


if __name__ == "__main__":
    main()
