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

PROBES = ("attention", "timestep", "skips", "attribution", "evaluate", "causal")


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
    elif name == "causal":
        check_causal(cfg)
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


def causal_prompts(cfg) -> tuple[list[str], list[str] | None]:
    """(prompts, counterfactuals or None) of a causal run: generated pairs (`probe.pairs`) or the ones given."""
    pc = cfg["probe"]
    if pc.get("pairs") is not None:
        from tiny_sd.prompts import counterfactual_pairs

        pairs = counterfactual_pairs(pc["pairs"], int(pc["n_pairs"]))
        return [a for a, _ in pairs], [b for _, b in pairs]
    prompts = prompts_of(cfg)
    given = pc.get("counterfactuals")
    if given is None and pc.get("counterfactual") is not None:
        given = [pc["counterfactual"]]
    if given is None:
        return prompts, None
    if isinstance(given, str) or len(given) != len(prompts) or not all(isinstance(g, str) for g in given):
        raise ValueError(f"probe.counterfactuals={given!r}: one counterfactual string per prompt ({len(prompts)})")
    return prompts, [str(g) for g in given]


def check_causal(cfg) -> None:
    from tiny_sd.prompts import ATTRIBUTES

    from .causal import DIRECTIONS, MODES, build_items
    from .patching import PATCHABLE

    pc = cfg["probe"]
    mode = pc.get("mode")
    if mode not in MODES:
        raise ValueError(f"probe.mode={mode!r}: one of {', '.join(MODES)}")
    if pc.get("direction") not in DIRECTIONS:
        raise ValueError(f"probe.direction={pc.get('direction')!r}: one of {', '.join(DIRECTIONS)}")
    if pc.get("pairs") is not None and pc["pairs"] not in ATTRIBUTES:
        raise ValueError(f"probe.pairs={pc['pairs']!r}: one of {', '.join(ATTRIBUTES)} (tiny_sd's generated pairs) or null")
    for key, lo in (("n_pairs", 1), ("n_seeds", 1), ("batch", 1), ("cache_items", 1), ("top_k", 0)):
        _int(f"probe.{key}", pc.get(key), lo)
    _number("probe.factor", pc.get("factor"), why="attention multiplier of mode=reweight")
    _number("probe.noise", pc.get("noise"), 0, open_lo=True, why="embedding noise in table stds (mode=restore)")
    kinds = pc.get("kinds")
    if isinstance(kinds, str) or not kinds or any(k not in PATCHABLE for k in kinds):
        raise ValueError(f"probe.kinds={kinds!r}: a list of site kinds from {', '.join(PATCHABLE)}")
    names = pc.get("sites")
    if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names) or not names):
        raise ValueError(f"probe.sites={names!r}: a list of site names, e.g. [down.1.attn.0, up.1.res.2], or null")
    from .causal import TOKEN_PARTS

    parts = pc.get("tokens")
    if isinstance(parts, str) or not parts or any(t not in TOKEN_PARTS for t in parts):
        raise ValueError(f"probe.tokens={parts!r}: a list from {', '.join(TOKEN_PARTS)}")
    for key in ("groups", "singles"):
        if not isinstance(pc.get(key), bool):
            raise ValueError(f"probe.{key}={pc.get(key)!r}: true or false")
    if not (pc["groups"] or pc["singles"]):
        raise ValueError("probe.groups and probe.singles are both false: nothing to patch")
    prompts, counterfactuals = causal_prompts(cfg)
    if mode == "patch" and counterfactuals is None:
        raise ValueError("mode=patch needs probe.counterfactual=\"...\" (the prompt with one word changed), "
                         "probe.counterfactuals=[...] or probe.pairs=colour|shape|relation")
    if mode != "patch" and pc.get("word") is None and counterfactuals is None:
        raise ValueError(f"mode={mode} needs probe.word= (a word of the prompt)")
    build_items(mode, prompts, counterfactuals=counterfactuals, word=pc.get("word"), other=pc.get("other"),
                direction=pc["direction"], n_seeds=int(pc["n_seeds"]), seed=int(cfg["seed"]))


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
    if name == "causal":
        check_causal_model(cfg, pipe, h, w)
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


def check_causal_model(cfg, pipe, h: int, w: int) -> None:
    """Pairs need tiny_sd; every prompt fits the model; the words resolve to tokens; the sites exist."""
    from .causal import EDITS, build_items, empty_bins, select_sites
    from .interventions import swap_order
    from .words import word_positions

    pc = cfg["probe"]
    if pc.get("pairs") is not None and not is_tiny_sd(pipe):
        raise ValueError("probe.pairs generates shapes-world captions: it needs tiny_sd; give prompt= and "
                         "probe.counterfactual= for another model")
    prompts, counterfactuals = causal_prompts(cfg)
    check_prompts(pipe, prompts + (counterfactuals or []), h, w)
    items = build_items(pc["mode"], prompts, counterfactuals=counterfactuals, word=pc.get("word"),
                        other=pc.get("other"), direction=pc["direction"], n_seeds=1, seed=0)
    for it in items:
        try:
            pos = word_positions(pipe.tokenizer, it.source, it.index)
            if it.partner is not None:
                swap_order(pipe.tokenizer.model_max_length, pos, word_positions(pipe.tokenizer, it.source, it.partner))
        except ValueError as e:
            raise ValueError(f"probe.word: {e.args[0]}") from None
    empty = empty_bins(pipe, int(cfg["sample_steps"]), int(cfg["timestep_bins"]))
    if empty:
        raise ValueError(f"timestep_bins={cfg['timestep_bins']} with sample_steps={cfg['sample_steps']}: bins {empty} "
                         "hold no sampling step, so patching them would read as no effect; use fewer bins or more steps")
    kinds = ["attn2"] if pc["mode"] in EDITS else list(pc["kinds"])
    try:
        select_sites(pipe.unet, kinds, None if pc.get("sites") is None else list(pc["sites"]))
    except Exception as e:
        raise ValueError(f"probe.sites: {e}") from None


def check(cfg, load):
    """check_values, then `load(cfg)` (the pipeline: a missing or mis-keyed checkpoint raises here), then
    check_model; returns the pipeline."""
    check_values(cfg)
    pipe = load(cfg)
    check_model(cfg, pipe)
    return pipe
