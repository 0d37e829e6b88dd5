"""Fail before any compute: the budget is usable, the model resolves and every variant of the sweep is valid
on its UNet.

Runtime failures of one variant (NaNs, out-of-memory, a crash in training) are recorded per job and the
sweep goes on; but a missing checkpoint or a misspelt component name would fail *every* job the same way,
so they stop the command at once with one clear message (exit code 2) and nothing is computed.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from foundation.cli import refusing_bad_input
from foundation.loading import load_pipeline
from foundation.values import is_finite_number, is_int, plain

from . import data, protocols, scoring, surgery
from .distributed import local_device


def specs(cfg: DictConfig) -> dict[str, dict]:
    """Every ablation spec the command can run: the sweep's variants, else the `ablation` group node."""
    v = cfg.get("variants")
    variants = plain(v) if v else {}  # an empty DictConfig is falsy: single runs
    if variants:
        return {str(k): dict(v) for k, v in variants.items()}
    return {str(cfg.get("variant", "ablation")): dict(plain(cfg.ablation))}


def check_budget(cfg: DictConfig) -> None:
    """Raise ValueError naming the first budget/protocol value a job cannot use. Without this, a bad value
    (budget.sample_batch=0, budget.n_images=0, budget.finetune_steps=0) fails in every job, and only after
    that job has trained."""
    try:
        plan = protocols.training_plan(plain(cfg.protocol), 0)  # the seed does not change what is valid
    except protocols.PlanError as e:
        raw = OmegaConf.to_container(cfg.protocol, resolve=False).get(e.key) if isinstance(cfg.protocol, DictConfig) \
            else None
        ref = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
        src = f" (set by {ref.group(1)})" if ref else ""  # name what the user overrides: budget.finetune_steps
        raise ValueError(f"{e}{src}") from None
    b = cfg.budget
    images = scoring.use_image_metrics(cfg)
    # (minimum, why): the integer counts a job uses
    need = {"val_data": (1, "held-out latents for the denoising loss"),
            "n_images": (2, "FD/KID need 2 samples; set image_metrics=false to allow 1") if images
            else (1, "images sampled per job"),
            "sample_steps": (1, "denoising steps"), "sample_batch": (1, "images per sampling batch"),
            "grid_images": (1, "cells of samples.png; more than n_images just shows all of them")}
    if plan["steps"]:
        need["train_data"] = (1, "training images")
    for key in ("seeds", "seeds_floor"):  # sweep files read them as range(0, n): 0 would launch no job
        if key in b:
            need[key] = (1, "seeds a sweep runs")
    for key, (lo, why) in need.items():
        v = b.get(key)
        if not (is_int(v) and v >= lo):
            raise ValueError(f"budget.{key} must be an integer >= {lo} ({why}), got {v!r}")
    v = b.get("guidance_scale")
    if not is_finite_number(v):
        raise ValueError(f"budget.guidance_scale must be a finite number, got {v!r}")


def check(cfg: DictConfig) -> None:
    """Raise ModelNotFoundError / ValueError naming the problem; loads the (cached) model, computes nothing."""
    check_budget(cfg)
    planned = planned_variants(cfg)
    defined = specs(cfg)
    unknown = [v for v in planned if v not in defined]
    if cfg.get("variants") and unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; this sweep defines: "
                         f"{', '.join(defined)}")
    m = cfg.model
    pipe = load_pipeline(m.path, device=local_device(m.device), dtype=m.dtype, download=bool(m.get("download", False)))
    check_data(cfg, pipe)
    check_metrics(cfg)
    scratch = cfg.protocol.name == "scratch"
    for name, spec in defined.items():
        try:
            surgery.validate(pipe.unet, spec, from_scratch=scratch)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"variant {name!r}: {e}") from e


def check_data(cfg: DictConfig, pipe) -> None:
    """The data serves this model (resolution, shapes refusal), the prompts exist in the number asked for, and the
    held-out split holds the metrics' reference set; a missing folder or file is a ValueError (bad input)."""
    try:
        jd = data.check(cfg, pipe)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ValueError(str(e)) from None
    ref = cfg.get("metrics", {}).get("reference", {}) or {}
    if scoring.use_image_metrics(cfg) and ref.get("dataset", "data") == "data" and cfg.data.kind != "shapes":
        need = int(ref.get("n", 2))
        if len(jd.heldout) < need:
            raise ValueError(f"metrics.reference.n={need} but data {jd.name!r} holds out {len(jd.heldout)} images "
                             f"(data.heldout={cfg.data.get('heldout')}): lower metrics.reference.n or hold out more")


def check_metrics(cfg: DictConfig) -> None:
    """The image scorer can be set up and can produce its primary metric (or the configured fallback): a missing
    Inception weights file under metrics=coco (no fallback) is refused here, not after sampling."""
    if scoring.use_image_metrics(cfg):
        scoring.scorer(plain(cfg.get("metrics")), None, "cpu")


def planned_jobs(config: DictConfig) -> list[dict]:
    """The (variant, seed) grid the basic sweeper will launch: sweep-file params, then command-line overrides."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    params += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(params)
    jobs = []
    for batch in BasicSweeper.split_arguments(overrides, None)[0]:
        kv = dict(o.split("=", 1) for o in batch)
        jobs.append({"variant": kv.get("variant", config.get("variant")), "seed": int(kv.get("seed", config.seed))})
    return jobs


def planned_variants(cfg: DictConfig) -> list[str]:
    """Variant names the command will run: the multirun grid (the callback's config carries the `hydra` node),
    else `cfg.variant`."""
    if "hydra" in cfg and cfg.hydra.get("sweeper") is not None:
        try:
            return list(dict.fromkeys(str(j["variant"]) for j in planned_jobs(cfg)))
        except Exception:  # noqa: BLE001 - another sweeper's syntax: check the defined variants only
            pass
    return [str(cfg.get("variant"))]


def check_or_exit(cfg: DictConfig) -> None:
    with refusing_bad_input():
        check(cfg)
