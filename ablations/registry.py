"""The registry of surgery ops, keyed by name the way diffusers keys attention processors: each op's file declares
its `Op` (defaults, validation, application) and registers it on import; `ablations.surgery` dispatches by name.
Adding an op is one new file that registers an `Op`, imported by `surgery`, plus its `configs/ablation/<op>.yaml`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Op:
    """A surgery op. `defaults`: every argument with its default (None: required unless named in `optional`);
    `validate(unet, args, from_scratch)` raises ValueError naming the valid choices and builds nothing;
    `apply(unet, args, from_scratch)` returns a new module and never modifies `unet`; `order` places the op in
    listings (the README's order)."""

    name: str
    defaults: dict
    validate: Callable[[nn.Module, dict, bool], None]
    apply: Callable[[nn.Module, dict, bool], nn.Module]
    optional: tuple[str, ...] = ()
    order: int = 100
    doc: str = field(default="", compare=False)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in OPS and OPS[op.name] != op:
        raise ValueError(f"surgery op {op.name!r} is registered twice")
    OPS[op.name] = op
    return op


def names() -> list[str]:
    return sorted(OPS, key=lambda n: (OPS[n].order, n))


register(Op("none", {}, validate=lambda unet, args, scratch: None,
            apply=lambda unet, args, scratch: copy.deepcopy(unet), order=0, doc="the unchanged architecture"))
