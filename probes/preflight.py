"""Fail before any compute for `python -m probes ...`: every value the probe will use is checked, the values that
need no model before its weights load, the rest (vocabulary, image size, skip names, attention grids) before
sampling. Each problem is a ValueError naming the option, the value and what is allowed; the CLI turns it into one
line and exit code 2 (foundation.cli), as the ablations CLI does.
"""

from __future__ import annotations

import math

from foundation import sampling
from foundation.loading import resolve_device, resolve_dtype
from foundation.values import is_finite_number, is_int
from tiny_sd.prompts import check_prompts, is_tiny_sd

from .attention_grids import attention_sides
from .hooks import ProbeError
from .skips import skip_named

PROBES = ("attention", "timestep", "skips", "attribution", "evaluate")


def _get(cfg, key, default=None):
    v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if v is None else v


def _int(name: str, v, lo: int | None = None, hi: int | None = None, why: str = "") -> int:
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={v!r}: must be an integer {rng}{f' ({why})' if why else ''}")
    return v


def _number(name: str, v, lo: float | None = None, hi: float | None = None, why: str = "",
            open_lo: bool = False) -> float:
    ok = is_finite_number(v) and (lo is None or (v > lo if open_lo else v >= lo)) and (hi is None or v <= hi)
    if not ok:
        rng = "" if lo is None else (f" {'>' if open_lo else '>='} {lo}" if hi is None else
                                     f" in {'(' if open_lo else '['}{lo}, {hi}]")
        raise ValueError(f"{name}={v!r}: must be a finite number{rng}{f' ({why})' if why else ''}")
    return float(v)


def prompts_of(cfg) -> list[str]:
    """The prompts a run samples (`prompts` if given, else `prompt`), each a non-empty string."""
    given = cfg.get("prompts") if hasattr(cfg, "get") else None
    if given is not None:
        if isinstance(given, str) or not hasattr(given, "__len__") or len(given) == 0:
            raise ValueError(f"prompts={given!r}: give a non-empty list of prompts, or prompt=\"...\"")
        prompts = list(given)
    else:
        prompts = [cfg.get("prompt")]
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {p!r} is empty: give the text to sample, e.g. prompt=\"a red circle\"")
    return [str(p) for p in prompts]


def check_values(cfg) -> None:
    """Everything that needs no model: probe name, prompts, sampling values, device/dtype, probe options."""
    pc = cfg["probe"]
    name = pc.get("name")
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; choose one of {', '.join(PROBES)}")
    if name != "evaluate":
        prompts_of(cfg)
    _int("seed", cfg.get("seed"), 0)
    _int("sample_steps", cfg.get("sample_steps"), 1, why="denoising steps")
    _number("guidance_scale", cfg.get("guidance_scale"), 0, why="classifier-free guidance scale; <= 1 turns it off")
    _int("timestep_bins", cfg.get("timestep_bins"), 1, why="timestep bins of the attention maps")
    for key in ("height", "width"):
        if cfg.get(key) is not None:
            _int(key, cfg.get(key), 1, why="image size in pixels; null for the model's own")
    m = cfg["model"]
    dev = resolve_device(m.get("device"))
    resolve_dtype(m.get("dtype"), dev)
    if name == "attention":
        _int("probe.refine", _get(pc, "refine", 0), 0, why="self-attention propagation steps; 0: DAAM's heatmaps")
        sides = _get(pc, "self_attention", [])
        if isinstance(sides, (str, int)) or not all(is_int(s) and s >= 1 for s in sides):
            raise ValueError(f"probe.self_attention={sides!r}: a list of latent grid heights, e.g. [8]")
        if not isinstance(_get(pc, "mean_heads", False), bool):
            raise ValueError(f"probe.mean_heads={pc.get('mean_heads')!r}: true or false")
    elif name in ("timestep", "skips"):
        _int("probe.n_timesteps", pc.get("n_timesteps"), 1, why="timesteps the final latent is re-noised to")
        _int("probe.batch", _get(pc, "batch", 1), 1, why="interventions per UNet call")
        if name == "timestep":
            _int("probe.swap_shift", pc.get("swap_shift"), 0)
        else:
            _number("probe.cutoff", pc.get("cutoff"), 0, 0.5, why="cycles/pixel; Nyquist is 0.5")
            _number("probe.scale", pc.get("scale"))
    elif name == "attribution":
        _int("probe.timestep", pc.get("timestep"), 0)
        _int("probe.n_steps", pc.get("n_steps"), 1, why="integration steps of integrated gradients")
        if pc.get("skip") is not None and not isinstance(pc.get("skip"), str):
            raise ValueError(f"probe.skip={pc.get('skip')!r}: a skip name (the up ResNet that concatenates it, e.g. up_blocks.2.resnets.2) or null")
    elif name == "evaluate":
        taus = pc.get("taus")
        if not taus or not all(is_finite_number(t) and 0 < t < 1 for t in taus):
            raise ValueError(f"probe.taus={taus!r}: a list of thresholds in (0, 1)")
        if not any(math.isclose(float(t), 0.4) for t in taus):
            raise ValueError(f"probe.taus={list(taus)} must include 0.4, DAAM's threshold, on which the headline "
                             "and the object-size split are reported")
        for key in ("n_generated", "n_dataset"):
            _int(f"probe.{key}", pc.get(key), 0)
        _int("probe.offset", _get(pc, "offset", 0), 0, why="first held-out caption")
        if pc.get("n_generated") + pc.get("n_dataset") == 0:
            raise ValueError("probe.n_generated and probe.n_dataset are both 0: nothing to score")
        _int("probe.batch_size", pc.get("batch_size"), 1)
        _number("probe.strength", pc.get("strength"), 0, 1, open_lo=True, why="img2img strength")


def check_model(cfg, pipe) -> None:
    """What depends on the loaded pipeline: vocabulary and token count, image size, timestep ranges, skip names,
    the self-attention grids asked for, and tiny_sd for `evaluate`."""
    pc = cfg["probe"]
    name = pc["name"]
    h, w = sampling.image_size(pipe, cfg.get("height"), cfg.get("width"))
    if name == "evaluate":
        if not is_tiny_sd(pipe):
            raise ValueError("`evaluate` scores heatmaps against the shapes world's ground truth: it needs tiny_sd "
                             "(model=tiny_sd or a pipeline with the shapes-world tokenizer)")
        check_prompts(pipe, [], h, w)
        return
    check_prompts(pipe, prompts_of(cfg), h, w)
    T = pipe.scheduler.config.num_train_timesteps
    if name in ("timestep", "skips"):
        _int("probe.n_timesteps", pc["n_timesteps"], 1, T, why=f"the scheduler has {T} training timesteps")
    if name == "attribution":
        _int("probe.timestep", pc["timestep"], 0, T - 1, why=f"the scheduler has {T} training timesteps")
        if pc.get("skip") is not None:
            try:
                skip_named(pipe.unet, pc["skip"])
            except ProbeError as e:
                raise ValueError(f"probe.skip: {e}") from None
    if name == "attention":
        latent_h = h // pipe.vae_scale_factor
        sides = attention_sides(pipe.unet, latent_h)
        bad = [s for s in _get(pc, "self_attention", []) if s not in sides]
        if bad:
            raise ValueError(f"probe.self_attention={list(pc['self_attention'])}: no attention runs on a grid of height "
                             f"{bad} at height={h}; the grids are {sides}")


def check(cfg, load):
    """check_values, then `load(cfg)` (the pipeline: a missing or mis-keyed checkpoint raises here), then
    check_model; returns the pipeline."""
    check_values(cfg)
    pipe = load(cfg)
    check_model(cfg, pipe)
    return pipe
