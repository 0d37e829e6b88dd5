"""Norm swap: replace the UNet's GroupNorms by another normalisation, on a copy.

Stable Diffusion's UNet normalises with GroupNorm(32) (Wu & He 2018) in three places:
- `resnet`:    `ResnetBlock2D.norm1/norm2` (before each conv),
- `attention`: `Transformer2DModel.norm` (before `proj_in` of every spatial transformer),
- `output`:    `conv_norm_out` (before the last conv).
The token LayerNorms inside the transformer blocks are not image norms and are left alone.

Kinds (all act on a (B, C, H, W) tensor and keep its shape):
- `groupnorm`   GroupNorm(G, C), G = `groups` (default: the base model's G)         (Wu & He 2018)
- `layernorm`   GroupNorm(1, C): statistics over C, H and W. Equivalent to `nn.LayerNorm([C, H, W])` but,
                unlike it, not tied to one resolution.
- `layernorm2d` per-pixel LayerNorm over channels (ConvNeXt's LayerNorm2d: channels-last permute)
- `instancenorm` per-sample, per-channel statistics over H, W (= GroupNorm(C, C))
- `rmsnorm`     per-pixel RMS over channels, no centring: EDM2's "pixel norm" (Karras et al. 2024, Eq. 8 /
                `normalize`), followed by the carried-over per-channel affine
- `batchnorm`   BatchNorm2d: batch statistics in training, running statistics in eval. Its running stats
                start at (0, 1), so under the `inference` protocol it is close to "no norm + affine".
- `none`        Identity: the norm is removed (EDM2 config F removes group norms), affine dropped.

The per-channel affine (weight, bias) of the replaced GroupNorm is carried over wherever the new norm has one
of the same shape (every kind except `none`). Any swap invalidates the statistics the pretrained weights were
trained with: numbers from the `inference` protocol only say how brittle the model is to the swap; use
`finetune` or `scratch` to compare norms.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from foundation import sites
from foundation.values import is_int

from .registry import Op, register

KINDS = ("groupnorm", "layernorm", "layernorm2d", "instancenorm", "rmsnorm", "batchnorm", "none")
TARGETS = ("resnet", "attention", "output")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of each pixel of a (B, C, H, W) tensor (channels-last permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PixelNorm2d(nn.Module):
    """x / sqrt(mean_c(x^2) + eps) per pixel (EDM2's pixel norm; RMSNorm over channels), then affine."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y

    def extra_repr(self) -> str:
        return f"{self.weight.numel() if self.weight is not None else '?'}, eps={self.eps}"


def target_of(name: str) -> str | None:
    """Which of TARGETS a norm site's path belongs to (None: not an image norm of the UNet)."""
    if ".resnets." in name:
        return "resnet"
    if ".attentions." in name:
        return "attention"
    if name == "conv_norm_out":
        return "output"
    return None


def find_norms(unet: nn.Module, targets: Iterable[str]) -> dict[str, nn.GroupNorm]:
    """{module path: GroupNorm} of the UNet's norm sites (`foundation.sites`) in the selected targets."""
    targets = set(targets)
    return {s.path: unet.get_submodule(s.path) for s in sites.sites(unet, "norm") if target_of(s.path) in targets}


def validate(unet: nn.Module, kind: str, targets: Iterable[str], groups: int | None = None) -> dict[str, nn.GroupNorm]:
    """Check a norm swap before any compute; returns the norms it will replace."""
    if kind not in KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; valid: {', '.join(KINDS)}")
    targets = list(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"unknown norm targets {bad or targets!r}; valid: {', '.join(TARGETS)} (one or more)")
    if groups is not None and kind != "groupnorm":
        raise ValueError(f"`groups` only applies to kind 'groupnorm', not {kind!r}")
    norms = find_norms(unet, targets)
    if not norms:
        # A renamed diffusers class must not turn the swap into a silent no-op.
        raise ValueError(f"no GroupNorm found for targets {targets} in {type(unet).__name__}")
    if kind == "groupnorm" and groups is not None:
        if not is_int(groups) or groups < 1:
            raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
        odd = sorted({m.num_channels for m in norms.values() if m.num_channels % groups})
        if odd:
            raise ValueError(f"groups={groups} does not divide the channel counts {odd}; "
                             f"valid: divisors of every count in {sorted({m.num_channels for m in norms.values()})}")
    return norms


def make_norm(gn: nn.GroupNorm, kind: str, groups: int | None = None) -> nn.Module:
    """The replacement for one GroupNorm, with its affine carried over where shapes allow."""
    c, eps, affine = gn.num_channels, gn.eps, gn.affine
    if kind == "none":
        return nn.Identity()
    new = {
        "groupnorm": lambda: nn.GroupNorm(groups or gn.num_groups, c, eps=eps, affine=affine),
        "layernorm": lambda: nn.GroupNorm(1, c, eps=eps, affine=affine),
        "layernorm2d": lambda: LayerNorm2d(c, eps=eps, elementwise_affine=affine),
        "instancenorm": lambda: nn.InstanceNorm2d(c, eps=eps, affine=affine),
        "rmsnorm": lambda: PixelNorm2d(c, eps=eps, affine=affine),
        "batchnorm": lambda: nn.BatchNorm2d(c, eps=eps, affine=affine),
    }[kind]()
    if affine:
        with torch.no_grad():
            new.weight.copy_(gn.weight)
            new.bias.copy_(gn.bias)
    return new.to(device=gn.weight.device if affine else None,
                  dtype=gn.weight.dtype if affine else None)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def swap_norms(unet: nn.Module, kind: str, targets: Iterable[str] = TARGETS, groups: int | None = None) -> nn.Module:
    """A deep copy of `unet` whose selected GroupNorms are replaced by `kind` (the input is not modified)."""
    names = list(validate(unet, kind, targets, groups))
    new = copy.deepcopy(unet)
    for name in names:
        _set_submodule(new, name, make_norm(new.get_submodule(name), kind, groups))
    return new


def _validate_op(unet: nn.Module, a: dict, from_scratch: bool) -> None:
    validate(unet, a["kind"], a["targets"], a["groups"])


register(Op("norms", {"kind": None, "targets": list(TARGETS), "groups": None}, _validate_op,
            lambda unet, a, scratch: swap_norms(unet, a["kind"], a["targets"], a["groups"]),
            optional=("groups",), order=1))
