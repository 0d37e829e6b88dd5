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

Each op is an `ablations.registry.Op` declared in its own file. `validate` runs every check of the op on the base
model without computing anything, so a bad spec fails
before a sweep spends minutes on training; the error lists the valid choices. `apply` always returns a new
module; the base (possibly shared with `load_pipeline`'s cache) is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import nn

from . import blocks, depth, norms, skips  # noqa: F401 - importing an op's file registers it
from .registry import OPS, names
from foundation.values import plain


def _plain(spec) -> dict:
    return dict(plain(spec) or {})  # a DictConfig resolved to plain Python types


def resolve(spec: Mapping) -> dict:
    """The spec with the op's defaults filled in; unknown ops or arguments raise, listing the valid ones."""
    spec = _plain(spec)
    name = spec.pop("op", None)
    if name not in OPS:
        raise ValueError(f"unknown ablation op {name!r}; valid: {', '.join(names())}")
    op = OPS[name]
    unknown = sorted(set(spec) - set(op.defaults))
    if unknown:
        raise ValueError(f"unknown arguments {unknown} for op {name!r}; valid: {', '.join(op.defaults) or '(none)'}")
    args = {**copy.deepcopy(op.defaults), **spec}
    missing = [k for k, v in args.items() if v is None and k not in op.optional]
    if missing:
        raise ValueError(f"op {name!r} needs {missing}")
    return {"op": name, **args}


def validate(unet: nn.Module, spec: Mapping, from_scratch: bool = False) -> dict:
    """All checks of `apply`, without building anything. Returns the resolved spec."""
    s = resolve(spec)
    OPS[s["op"]].validate(unet, s, from_scratch)
    return s


def apply(unet: nn.Module, spec: Mapping, from_scratch: bool = False) -> nn.Module:
    """A new UNet with the surgery `spec` applied. `from_scratch` only matters for `depth` (build, not cut)."""
    s = validate(unet, spec, from_scratch)
    return OPS[s["op"]].apply(unet, s, from_scratch)
