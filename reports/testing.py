"""Synthetic sweep folders in the job-file format of docs/CONTRACTS.md (for tests here and in other packages)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

HIB = {"fid": False, "kid": False, "clip_score": True}
# The metrics a tiny_sd sweep writes (ablations/job.py, metrics/score.py), for report tests at full width.
SHAPES_HIB = {"denoising_loss": False, "fd_evaluator": False, "kid_evaluator": False, "kid_evaluator_std": False,
              "fd_evaluator_floor": False, "kid_evaluator_floor": False, "clip_evaluator": True, "colour_acc": True,
              "shape_acc": True, "object_acc": True, "all_correct": True, "count_correct": True,
              "relation_acc": True, "train_loss_last": False}
SHAPES_PRIMARY = ["denoising_loss", "fid", "fd_evaluator", "kid", "kid_evaluator", "object_acc", "clip_score",
                  "clip_evaluator"]


def write_job(root: Path, variant: str, seed: int, *, metrics: dict | None = None, status: str = "ok",
              error: str | None = None, baseline: bool = False, samples: bool = True, sweep: str = "norms",
              protocol: str = "inference", provenance: dict | None = None, ci: dict | None = None,
              config: str = "") -> Path:
    d = root / "jobs" / f"{variant}__seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    metrics = metrics or {}
    rec = {"sweep": sweep, "variant": variant, "baseline": baseline, "protocol": protocol, "seed": seed,
           "status": status, "error": error, "metrics": metrics if status == "ok" else {},
           "ci": ({k: [v - 0.1, v + 0.1] for k, v in metrics.items()} | (ci or {})) if status == "ok" else {},
           "higher_is_better": {k: {**HIB, **SHAPES_HIB}[k] for k in metrics},
           # the top-level fields metrics/score.py writes, one nested mapping, and `provenance` overrides
           "provenance": {"implementation": "torchmetrics", "extractor": "inception-v3-compat",
                          "weights_sha256": "6726825d" + "0" * 56, "resize": "bilinear-antialias to 64px", "n": 256,
                          "seeds": [0, 1, 2, 3], "sampler": "DDIM", "sample_steps": 25, "guidance_scale": 7.5,
                          "primary_metric": "fid", "fid_status": "ok", "reference": {"dataset": "shapes", "n": 2000},
                          "device": "cpu", "git": "abc1234", **(provenance or {})},
           "ablation": {"name": variant, "norm": "group" if variant == "baseline" else variant},
           "seconds": 12.5 + seed}
    (d / "result.json").write_text(json.dumps(rec))
    (d / "config.yaml").write_text(f"ablation:\n  name: {variant}\nseed: {seed}\n{config}")
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


def make_shapes_sweep(root: Path, variants=("groupnorm", "layernorm", "layernorm2d", "instancenorm", "rmsnorm",
                                            "batchnorm", "none"), seeds=(0, 1, 2), protocol: str = "inference",
                      primary=SHAPES_PRIMARY) -> dict:
    """A norms-like sweep with every metric a tiny_sd job writes (floors and KID's std included) and the sweep's
    ``primary_metrics`` in each job's config.yaml. Under protocol=inference the denoising loss is the same on every
    seed (fixed held-out latents, t and noise), with a job CI of ± 0.004; returns {(variant, seed): metrics}."""
    rng = np.random.default_rng(0)
    config = f"primary_metrics: [{', '.join(primary)}]\n" if primary else ""
    values = {}
    for i, v in enumerate(variants):
        loss = 0.05 + 0.01 * i
        for s in seeds:
            m = {"denoising_loss": loss if protocol == "inference" else loss + 0.002 * rng.normal(),
                 "fd_evaluator": 200 + 10 * i + 5 * rng.normal(), "kid_evaluator": 0.4 + 0.1 * rng.normal(),
                 "kid_evaluator_std": 0.2, "fd_evaluator_floor": 18.6, "kid_evaluator_floor": 0.05,
                 "clip_evaluator": 0.78 - 0.01 * i + 0.01 * rng.normal(),
                 **{k: float(np.clip(0.8 - 0.05 * i + 0.05 * rng.normal(), 0, 1))
                    for k in ("colour_acc", "shape_acc", "object_acc", "all_correct", "count_correct")},
                 "relation_acc": 0.0, "train_loss_last": 0.02 + 0.001 * i}
            write_job(root, v, s, metrics=m, baseline=i == 0, protocol=protocol, config=config,
                      ci={"denoising_loss": [loss - 0.004, loss + 0.004], "fd_evaluator_floor": [17.0, 20.0]})
            values[(v, s)] = m
    return values
