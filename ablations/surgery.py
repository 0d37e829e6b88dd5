"""One entry point for every surgery op: `apply(unet, spec)` and `validate(unet, spec)`.

A spec is a plain mapping (a Hydra `ablation` node) with an `op` and that op's arguments:

| op          | arguments (defaults)                                              | file        |
|-------------|-------------------------------------------------------------------|-------------|
| `none`      | -                                                                 | (identity)  |
| `norms`     | `kind`, `targets` ([resnet, attention, output]), `groups` (null)  | norms.py    |
| `skips`     | `mode` (zero/mean/scale), `skips` ("all"), `levels` (null), `scale` | skips.py  |
| `freeu`     | `b1`, `b2`, `s1`, `s2`                                            | skips.py    |
| `depth`     | `k` (transformer blocks kept)                                     | depth.py    |
| `attention` | `which` ([attn1] / [attn2] / both), `modules` (null = all)        | depth.py    |
| `blocks`    | `remove` ([pairs] / [mid] / both: BK-SDM)                          | blocks.py   |

`validate` runs every check of the op on the base model without computing anything, so a bad spec fails
before a sweep spends minutes on training; the error lists the valid choices. `apply` always returns a new
module; the base (possibly shared with `load_pipeline`'s cache) is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import nn

from . import blocks, depth, norms, skips
from .values import is_finite_number, plain

OPS = {
    "none": {},
    "norms": {"kind": None, "targets": list(norms.TARGETS), "groups": None},
    "skips": {"mode": None, "skips": "all", "levels": None, "scale": 0.0},
    "freeu": {"b1": None, "b2": None, "s1": None, "s2": None},
    "depth": {"k": None},
    "attention": {"which": list(depth.ATTENTIONS), "modules": None},
    "blocks": {"remove": list(blocks.PARTS)},
}


def _plain(spec) -> dict:
    return dict(plain(spec) or {})  # a DictConfig resolved to plain Python types


def resolve(spec: Mapping) -> dict:
    """The spec with the op's defaults filled in; unknown ops or arguments raise, listing the valid ones."""
    spec = _plain(spec)
    op = spec.pop("op", None)
    if op not in OPS:
        raise ValueError(f"unknown ablation op {op!r}; valid: {', '.join(OPS)}")
    unknown = sorted(set(spec) - set(OPS[op]))
    if unknown:
        raise ValueError(f"unknown arguments {unknown} for op {op!r}; valid: {', '.join(OPS[op]) or '(none)'}")
    args = {**copy.deepcopy(OPS[op]), **spec}
    missing = [k for k, v in args.items() if v is None and k not in ("groups", "levels", "modules")]
    if missing:
        raise ValueError(f"op {op!r} needs {missing}")
    return {"op": op, **args}


def validate(unet: nn.Module, spec: Mapping, from_scratch: bool = False) -> dict:
    """All checks of `apply`, without building anything. Returns the resolved spec."""
    s = resolve(spec)
    op = s["op"]
    if op == "norms":
        norms.validate(unet, s["kind"], s["targets"], s["groups"])
    elif op == "skips":
        if s["mode"] not in skips.MODES:
            raise ValueError(f"unknown skip mode {s['mode']!r}; valid: {', '.join(skips.MODES)}")
        skips.select(unet, s["skips"], s["levels"])
        if not is_finite_number(s["scale"]):
            raise ValueError(f"skip scale must be a finite number, got {s['scale']!r}")
    elif op == "freeu":
        skips.check_freeu(unet, {k: s[k] for k in ("b1", "b2", "s1", "s2")})
    elif op == "depth":
        depth.validate_depth(unet, s["k"], from_scratch)
    elif op == "attention":
        which = [s["which"]] if isinstance(s["which"], str) else s["which"]
        if not which or any(w not in depth.ATTENTIONS for w in which):
            raise ValueError(f"unknown attention {which!r}; valid: {', '.join(depth.ATTENTIONS)}")
        paths = list(depth.spatial_transformers(unet))
        mods = s["modules"]
        bad = [m for m in (mods or []) if m not in paths]
        if bad or (mods is not None and not list(mods)):
            raise ValueError(f"unknown spatial transformers {bad or mods!r}; valid: {', '.join(paths)}")
    elif op == "blocks":
        blocks.validate(unet, s["remove"])
    return s


def apply(unet: nn.Module, spec: Mapping, from_scratch: bool = False) -> nn.Module:
    """A new UNet with the surgery `spec` applied. `from_scratch` only matters for `depth` (build, not cut)."""
    s = validate(unet, spec, from_scratch)
    op = s["op"]
    if op == "none":
        return copy.deepcopy(unet)
    if op == "norms":
        return norms.swap_norms(unet, s["kind"], s["targets"], s["groups"])
    if op == "skips":
        return skips.edit_skips(unet, s["mode"], s["skips"], s["levels"], s["scale"])
    if op == "freeu":
        return skips.freeu(unet, s["b1"], s["b2"], s["s1"], s["s2"])
    if op == "depth":
        return depth.build_depth(unet, s["k"]) if from_scratch else depth.truncate_depth(unet, s["k"])
    if op == "attention":
        return depth.bypass_attention(unet, s["which"], s["modules"])
    return blocks.remove_blocks(unet, s["remove"])
