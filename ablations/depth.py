"""Transformer depth and attention removal.

- `truncate_depth(unet, k)`: keep the first k `BasicTransformerBlock`s of every spatial transformer
  (`Transformer2DModel.transformer_blocks`), on pretrained weights. k = 0 leaves norm -> proj_in -> proj_out
  plus the residual, i.e. the spatial transformer no longer mixes tokens.
- `build_depth(unet, k)`: a freshly initialised UNet of the same config with `transformer_layers_per_block=k`
  (the `scratch` protocol; k may exceed the base depth).
- `bypass_attention(unet, which)`: `attn1` (self-) and/or `attn2` (cross-attention) contribute nothing: their
  processor returns zeros, so `h = attn(norm(h)) + h` becomes `h = h`. Done with diffusers' processor strategy
  objects (`set_attn_processor({path: processor})`), with a count check.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from foundation import sites

from .blocks import editable_config
from .registry import Op, register

ATTENTIONS = ("attn1", "attn2")


def spatial_transformers(unet: nn.Module) -> dict[str, nn.Module]:
    """{path: Transformer2DModel} of the UNet's transformer sites (`foundation.sites`), in forward order."""
    found = {s.path: unet.get_submodule(s.path) for s in sites.sites(unet, "transformer")}
    if not found:
        raise ValueError(f"{type(unet).__name__} has no spatial transformers (modules with transformer_blocks)")
    return found


def depth(unet: nn.Module) -> int:
    """The smallest number of transformer blocks of any spatial transformer (the valid range of k)."""
    return min(len(m.transformer_blocks) for m in spatial_transformers(unet).values())


def validate_depth(unet: nn.Module, k: int, from_scratch: bool = False) -> None:
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"transformer depth k must be an int >= 0, got {k!r}")
    if not from_scratch and k > depth(unet):
        raise ValueError(f"cannot keep k={k} transformer blocks of pretrained weights with depth {depth(unet)}; "
                         f"valid: 0..{depth(unet)} (or protocol=scratch to build deeper)")


def truncate_depth(unet: nn.Module, k: int) -> nn.Module:
    """A deep copy of `unet` keeping the first k transformer blocks of every spatial transformer."""
    validate_depth(unet, k)
    new = copy.deepcopy(unet)
    for m in spatial_transformers(new).values():
        m.transformer_blocks = nn.ModuleList(list(m.transformer_blocks)[:k])
    return new


def build_depth(unet: nn.Module, k: int) -> nn.Module:
    """A new, randomly initialised UNet of `unet`'s config with `transformer_layers_per_block=k`."""
    validate_depth(unet, k, from_scratch=True)
    cfg = editable_config(unet)  # else an SD 1.x/2.x config, which never sets the depth, keeps depth 1
    cfg["transformer_layers_per_block"] = k
    new = type(unet).from_config(cfg)
    p = next(unet.parameters())
    return new.to(device=p.device, dtype=p.dtype)


class ZeroAttnProcessor:
    """An attention processor whose output is zero: the attention's residual branch is removed."""

    def __call__(self, attn, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def bypass_attention(unet: nn.Module, which: str | Iterable[str] = ATTENTIONS,
                     modules: Iterable[str] | None = None) -> nn.Module:
    """A deep copy of `unet` where the selected attentions (`attn1`, `attn2`) output zeros.

    `modules` restricts it to some spatial transformers (paths such as `"down_blocks.0.attentions.0"`)."""
    which = [which] if isinstance(which, str) else list(which)
    if not which or any(w not in ATTENTIONS for w in which):
        raise ValueError(f"unknown attention {which!r}; valid: {', '.join(ATTENTIONS)} (one or both)")
    procs = dict(unet.attn_processors)  # keys: "<path>.processor"
    paths = list(spatial_transformers(unet))
    if modules is not None:
        modules = list(modules)
        unknown = [m for m in modules if m not in paths]
        if unknown or not modules:
            raise ValueError(f"unknown spatial transformers {unknown or modules!r}; valid: {', '.join(paths)}")
        paths = modules
    chosen = [k for k in procs if k.rsplit(".", 2)[-2] in which and any(k.startswith(p + ".") for p in paths)]
    if not chosen:
        raise ValueError(f"no {which} attention found under {paths}")
    new = copy.deepcopy(unet)
    new.set_attn_processor({k: (ZeroAttnProcessor() if k in chosen else v) for k, v in new.attn_processors.items()})
    hit = sum(isinstance(p, ZeroAttnProcessor) for p in new.attn_processors.values())
    if hit != len(chosen):
        raise RuntimeError(f"set {hit} zero processors, expected {len(chosen)}")
    return new


def _validate_attention_op(unet: nn.Module, a: dict, from_scratch: bool) -> None:
    which = [a["which"]] if isinstance(a["which"], str) else a["which"]
    if not which or any(w not in ATTENTIONS for w in which):
        raise ValueError(f"unknown attention {which!r}; valid: {', '.join(ATTENTIONS)}")
    paths = list(spatial_transformers(unet))
    mods = a["modules"]
    bad = [m for m in (mods or []) if m not in paths]
    if bad or (mods is not None and not list(mods)):
        raise ValueError(f"unknown spatial transformers {bad or mods!r}; valid: {', '.join(paths)}")


register(Op("depth", {"k": None}, lambda unet, a, scratch: validate_depth(unet, a["k"], scratch),
            lambda unet, a, scratch: build_depth(unet, a["k"]) if scratch else truncate_depth(unet, a["k"]),
            order=4))
register(Op("attention", {"which": list(ATTENTIONS), "modules": None}, _validate_attention_op,
            lambda unet, a, scratch: bypass_attention(unet, a["which"], a["modules"]), optional=("modules",),
            order=5))
