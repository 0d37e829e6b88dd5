"""Skip-connection edits: remove (zero), mean-replace or scale the UNet's long skips; FreeU.

Addressing. The decoder consumes the encoder's skips one per up-block ResNet: `up_blocks.{i}.resnets.{j}`
concatenates `res_hidden_states_tuple[-1 - j]` to its input. A skip is named by the ResNet that consumes it
(`"up_blocks.2.resnets.0"`), and grouped by *level*: the resolution index of its up block, 0 = full latent
resolution (SD 1.x: 64x64), 1 = half, ... (`level = len(up_blocks) - 1 - i`).

Modes:
- `zero`  the skip tensor is replaced by zeros (the decoder's weights are unchanged, so the ResNet sees zeros in
          those input channels: removal without changing shapes);
- `mean`  replaced by its per-sample, per-channel spatial mean (keeps the skip's first moment, removes all
          spatial information: separates "the decoder needs some input there" from "it needs the detail");
- `scale` multiplied by `scale` (1.0 = unchanged).

The edit lives in a `SkipEdit` submodule of each up block (`up_blocks.{i}.skip_edit`), applied by a forward
pre-hook on the up block, so it is visible in `print(unet)` and survives `deepcopy`.

FreeU (Si et al. 2024) scales the first half of the backbone channels by b and the *lowest 2x2 Fourier bins*
of the skip by s, in the two lowest-resolution up blocks. We call diffusers' own `enable_freeu`; note that
s = 0 there is not skip removal (only the low frequencies are scaled; DESIGN.md section 5): use `zero` for that.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

MODES = ("zero", "mean", "scale")


def skip_names(unet: nn.Module) -> dict[str, int]:
    """{skip name (consuming ResNet path): level} for every long skip of the UNet."""
    n_up = len(unet.up_blocks)
    return {f"up_blocks.{i}.resnets.{j}": n_up - 1 - i
            for i, block in enumerate(unet.up_blocks) for j in range(len(block.resnets))}


def edit_tensor(x: torch.Tensor, mode: str, scale: float = 1.0) -> torch.Tensor:
    """The edited skip: pure function of the skip tensor."""
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    return x * scale


class SkipEdit(nn.Module):
    """Edits of one up block's skips, keyed by the consuming ResNet's index j."""

    def __init__(self, edits: dict[int, tuple[str, float]]):
        super().__init__()
        self.edits = dict(edits)

    def forward(self, res_hidden_states_tuple: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        skips = list(res_hidden_states_tuple)
        for j, (mode, scale) in self.edits.items():
            k = len(skips) - 1 - j  # ResNet j pops the j-th skip from the end
            skips[k] = edit_tensor(skips[k], mode, scale)
        return tuple(skips)

    def extra_repr(self) -> str:
        return ", ".join(f"resnets.{j}: {m}" + (f"({s})" if m == "scale" else "") for j, (m, s) in self.edits.items())


def _apply_skip_edit(block: nn.Module, args: tuple, kwargs: dict):
    # UNet2DConditionModel calls every up block with keyword arguments (diffusers >= 0.20).
    if "res_hidden_states_tuple" not in kwargs:
        raise RuntimeError("up block called without res_hidden_states_tuple: diffusers changed its call; "
                           "the skip edit would silently not apply")
    kwargs["res_hidden_states_tuple"] = block.skip_edit(kwargs["res_hidden_states_tuple"])
    return args, kwargs


def select(unet: nn.Module, skips: str | Iterable[str] = "all", levels: Iterable[int] | None = None) -> list[str]:
    """Validated skip selection: by name (or "all"), optionally restricted to levels."""
    names = skip_names(unet)
    chosen = list(names) if skips == "all" else list([skips] if isinstance(skips, str) else skips)
    unknown = [s for s in chosen if s not in names]
    if unknown or not chosen:
        raise ValueError(f"unknown skips {unknown or chosen!r}; valid: 'all' or any of {', '.join(names)}")
    if levels is not None:
        levels = list(levels)
        valid = sorted(set(names.values()))
        if not levels or any(lv not in valid for lv in levels):
            raise ValueError(f"invalid skip levels {levels!r}; valid: {valid} (0 = full resolution)")
        kept = [s for s in chosen if names[s] in levels]
        if not kept:  # an empty selection would be a silent copy of the baseline
            raise ValueError(f"no skip of {chosen} is at levels {levels}; their levels: "
                             f"{ {s: names[s] for s in chosen} }")
        chosen = kept
    return chosen


def edit_skips(unet: nn.Module, mode: str, skips: str | Iterable[str] = "all", levels: Iterable[int] | None = None,
               scale: float = 0.0) -> nn.Module:
    """A deep copy of `unet` whose selected skips are zeroed / mean-replaced / scaled."""
    if mode not in MODES:
        raise ValueError(f"unknown skip mode {mode!r}; valid: {', '.join(MODES)}")
    chosen = select(unet, skips, levels)
    new = copy.deepcopy(unet)
    per_block: dict[int, dict[int, tuple[str, float]]] = {}
    for name in chosen:
        i, j = int(name.split(".")[1]), int(name.split(".")[3])
        per_block.setdefault(i, {})[j] = (mode, float(scale))
    for i, edits in per_block.items():
        block = new.up_blocks[i]
        if hasattr(block, "skip_edit"):
            raise ValueError(f"up_blocks.{i} already has a skip edit; compose edits in one call")
        block.skip_edit = SkipEdit(edits)
        block.register_forward_pre_hook(_apply_skip_edit, with_kwargs=True)
    return new


def freeu(unet: nn.Module, b1: float, b2: float, s1: float, s2: float) -> nn.Module:
    """A deep copy of `unet` with diffusers' FreeU (Si et al. 2024) enabled with factors (b1, b2, s1, s2)."""
    for k, v in dict(b1=b1, b2=b2, s1=s1, s2=s2).items():
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"FreeU factor {k} must be a number >= 0, got {v!r}")
    if not hasattr(unet, "enable_freeu"):
        raise ValueError(f"{type(unet).__name__} has no enable_freeu (diffusers UNet2DConditionModel required)")
    new = copy.deepcopy(unet)
    new.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
    return new
