"""Synthetic sweep folders in the job-file format of docs/CONTRACTS.md (for tests here and in other packages)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

HIB = {"fid": False, "kid": False, "clip_score": True}


def write_job(root: Path, variant: str, seed: int, *, metrics: dict | None = None, status: str = "ok",
              error: str | None = None, baseline: bool = False, samples: bool = True, sweep: str = "norms",
              protocol: str = "inference", provenance: dict | None = None) -> Path:
    d = root / "jobs" / f"{variant}__seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    metrics = metrics or {}
    rec = {"sweep": sweep, "variant": variant, "baseline": baseline, "protocol": protocol, "seed": seed,
           "status": status, "error": error, "metrics": metrics if status == "ok" else {},
           "ci": {k: [v - 0.1, v + 0.1] for k, v in metrics.items()} if status == "ok" else {},
           "higher_is_better": {k: HIB[k] for k in metrics},
           # the top-level fields metrics/score.py writes, one nested mapping, and `provenance` overrides
           "provenance": {"implementation": "torchmetrics", "extractor": "inception-v3-compat",
                          "weights_sha256": "6726825d" + "0" * 56, "resize": "bilinear-antialias to 64px", "n": 256,
                          "seeds": [0, 1, 2, 3], "sampler": "DDIM", "sample_steps": 25, "guidance_scale": 7.5,
                          "primary_metric": "fid", "fid_status": "ok", "reference": {"dataset": "shapes", "n": 2000},
                          "device": "cpu", "git": "abc1234", **(provenance or {})},
           "ablation": {"name": variant, "norm": "group" if variant == "baseline" else variant},
           "seconds": 12.5 + seed}
    (d / "result.json").write_text(json.dumps(rec))
    (d / "config.yaml").write_text(f"ablation:\n  name: {variant}\nseed: {seed}\n")
    if samples and status == "ok":
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(d / "samples.png")
    return d


def make_sweep(root: Path, variants=("baseline", "no_norm", "layer_norm"), seeds=(0, 1, 2)) -> dict:
    """A complete sweep with known values; returns {(variant, seed): metrics}."""
    rng = np.random.default_rng(0)
    values = {}
    for i, v in enumerate(variants):
        for s in seeds:
            m = {"fid": float(20 + 3 * i + rng.normal()), "kid": float(0.01 + 0.002 * i + rng.normal() * 1e-4),
                 "clip_score": float(0.30 - 0.01 * i + rng.normal() * 1e-3)}
            write_job(root, v, s, metrics=m, baseline=(v == "baseline"))
            values[(v, s)] = m
    return values
