"""Skip-connection edits: remove (zero), mean-replace or scale the UNet's long skips; FreeU.

Addressing. The decoder consumes the encoder's skips one per up-block ResNet: `up_blocks.{i}.resnets.{j}`
concatenates `res_hidden_states_tuple[-1 - j]` to its input. A skip is named by the ResNet that consumes it
(`"up_blocks.2.resnets.0"`) and grouped by *level*, 0 = full latent resolution: the names and levels of
`foundation.sites.skips`, shared with the probes.

Modes (`foundation.skips.edit`, the probes' interventions too): `zero` (removal without changing shapes: the
decoder's weights are unchanged, so the ResNet sees zeros in those input channels), `mean` (the per-sample,
per-channel spatial mean: separates "the decoder needs some input there" from "it needs the detail"), `scale`.

The edit lives in a `SkipEdit` submodule of each up block (`up_blocks.{i}.skip_edit`), applied by a forward
pre-hook on the up block, so it is visible in `print(unet)` and survives `deepcopy`.

FreeU (Si et al. 2024) scales the first half of the backbone channels by b and the lowest Fourier bins of the
skip by s, in the two lowest-resolution up blocks (diffusers' `resolution_idx` 0 and 1). We apply it ourselves,
with diffusers' `fourier_filter`, in a `FreeU` submodule (`up_blocks.{i}.freeu`) and pre-hooks, rather than with
`enable_freeu`: diffusers 0.42 turns FreeU on only when all four factors are truthy, so a factor 0 silently gave
the unmodified model. Nonzero factors give `enable_freeu`'s output (tested to 1e-6); 0 is applied as 0.

What s does, exactly: `fourier_filter` multiplies a 2x2 block of the shifted spectrum (frequencies {-1, 0} on
each axis) by s and keeps the real part of the inverse FFT, so the skip's per-channel mean (the DC bin) is scaled
by s and the six bins (+-1, 0), (0, +-1), (+-1, +-1) of equal sign by (1 + s) / 2; all other bins pass. s = 0
therefore removes the skip's mean and halves its coarsest frequencies: it is not skip removal (use
`zero` for that). b = 0 zeroes the first half of the backbone channels.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable

import torch
from torch import nn

from foundation import sites
from foundation.skips import check_mode, edit
from foundation.values import is_finite_number

from .registry import Op, register

def skip_names(unet: nn.Module) -> dict[str, int]:
    """{skip name (consuming ResNet path): level} for every long skip of the UNet (`foundation.sites.skips`)."""
    return {s.name: s.level for s in sites.skips(unet)}


class SkipEdit(nn.Module):
    """Edits of one up block's skips, keyed by the consuming ResNet's index j."""

    def __init__(self, edits: dict[int, tuple[str, float]]):
        super().__init__()
        self.edits = dict(edits)

    def forward(self, res_hidden_states_tuple: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        skips = list(res_hidden_states_tuple)
        for j, (mode, scale) in self.edits.items():
            k = len(skips) - 1 - j  # ResNet j pops the j-th skip from the end
            skips[k] = edit(skips[k], mode, scale)
        return tuple(skips)

    def extra_repr(self) -> str:
        return ", ".join(f"resnets.{j}: {m}" + (f"({s})" if m == "scale" else "") for j, (m, s) in self.edits.items())


def _edit_skips(attr: str, block: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of an up block: its skip tuple through ``block.<attr>`` (a `SkipEdit` or a `FreeU`)."""
    # UNet2DConditionModel calls every up block with keyword arguments (diffusers >= 0.20).
    if "res_hidden_states_tuple" not in kwargs:
        raise RuntimeError("up block called without res_hidden_states_tuple: diffusers changed its call; "
                           f"its {attr} would silently not apply")
    kwargs["res_hidden_states_tuple"] = getattr(block, attr)(kwargs["res_hidden_states_tuple"])
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
    check_mode(mode)
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
        block.register_forward_pre_hook(functools.partial(_edit_skips, "skip_edit"), with_kwargs=True)
    return new


FREEU_STAGES = {0: ("b1", "s1"), 1: ("b2", "s2")}  # diffusers' up-block resolution_idx -> its FreeU factors


class FreeU(nn.Module):
    """FreeU of one up block, as diffusers' `apply_freeu` does it before each ResNet: the first half of the
    backbone channels times `b`, and the skip through `fourier_filter(threshold=1, scale=s)` (module docstring)."""

    def __init__(self, b: float, s: float):
        super().__init__()
        self.b, self.s = float(b), float(s)
        self.skip_channels: list[int] = []  # channels of the skip ResNet j receives; set by each forward

    def forward(self, res_hidden_states_tuple: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        from diffusers.utils.torch_utils import fourier_filter

        # Every skip of the tuple is consumed by one ResNet of this block, so filtering them all here is the
        # same as diffusers filtering each one as it is popped.
        skips = tuple(fourier_filter(x, threshold=1, scale=self.s) for x in res_hidden_states_tuple)
        self.skip_channels = [x.shape[1] for x in reversed(skips)]  # ResNet j pops the j-th skip from the end
        return skips

    def scale_backbone(self, x: torch.Tensor, j: int) -> torch.Tensor:
        # ResNet j's input is cat([backbone, skip]); diffusers scales the first half of the backbone's channels.
        half = (x.shape[1] - self.skip_channels[j]) // 2
        return torch.cat([x[:, :half] * self.b, x[:, half:]], dim=1)

    def extra_repr(self) -> str:
        return f"b={self.b}, s={self.s}"


def _freeu_backbone(freeu: FreeU, j: int, resnet: nn.Module, args: tuple):
    return (freeu.scale_backbone(args[0], j), *args[1:])


def check_freeu(unet: nn.Module, factors: dict) -> None:
    """Every check of `freeu` without building anything: finite factors >= 0 and the two up blocks to edit."""
    for k, v in factors.items():
        if not is_finite_number(v) or v < 0:
            raise ValueError(f"FreeU factor {k} must be a finite number >= 0, got {v!r}")
    ups = getattr(unet, "up_blocks", None)
    found = {getattr(b, "resolution_idx", None): b for b in (ups or [])}
    missing = [i for i in FREEU_STAGES if i not in found or not hasattr(found[i], "resnets")]
    if missing:
        raise ValueError(f"{type(unet).__name__} has no up block with resolution_idx {missing} (FreeU edits "
                         f"diffusers' up blocks 0 and 1)")
    for b in found.values():
        if getattr(b, "s1", None) is not None or hasattr(b, "freeu"):
            raise ValueError("the base UNet already has FreeU enabled; FreeU would be applied twice")


def freeu(unet: nn.Module, b1: float, b2: float, s1: float, s2: float) -> nn.Module:
    """A deep copy of `unet` with FreeU (Si et al. 2024) applied with factors (b1, b2, s1, s2); 0 means 0."""
    factors = dict(b1=b1, b2=b2, s1=s1, s2=s2)
    check_freeu(unet, factors)
    new = copy.deepcopy(unet)
    for block in new.up_blocks:
        stage = FREEU_STAGES.get(getattr(block, "resolution_idx", None))
        if stage is None:
            continue
        block.freeu = FreeU(factors[stage[0]], factors[stage[1]])
        block.register_forward_pre_hook(functools.partial(_edit_skips, "freeu"), with_kwargs=True)
        for j, resnet in enumerate(block.resnets):
            resnet.register_forward_pre_hook(functools.partial(_freeu_backbone, block.freeu, j))
    return new


def _validate_skips_op(unet: nn.Module, a: dict, from_scratch: bool) -> None:
    check_mode(a["mode"])
    select(unet, a["skips"], a["levels"])
    if not is_finite_number(a["scale"]):
        raise ValueError(f"skip scale must be a finite number, got {a['scale']!r}")


register(Op("skips", {"mode": None, "skips": "all", "levels": None, "scale": 0.0}, _validate_skips_op,
            lambda unet, a, scratch: edit_skips(unet, a["mode"], a["skips"], a["levels"], a["scale"]),
            optional=("levels",), order=2))
register(Op("freeu", {"b1": None, "b2": None, "s1": None, "s2": None},
            lambda unet, a, scratch: check_freeu(unet, {k: a[k] for k in ("b1", "b2", "s1", "s2")}),
            lambda unet, a, scratch: freeu(unet, a["b1"], a["b2"], a["s1"], a["s2"]), order=3))
