"""Editing one long skip, written once for the probes' interventions and the surgery op.

An up ResNet's input is `cat([backbone, skip], dim=1)`: `split` separates the halves of a skip site
(`foundation.sites.skips`), `edit` replaces the skip half.
"""

from __future__ import annotations

import torch

from .sites import Site

MODES = ("zero", "mean", "scale")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown skip mode {mode!r}; valid: {', '.join(MODES)}")


def edit(x: torch.Tensor, mode: str, scale: float = 1.0) -> torch.Tensor:
    """The edited skip (B, C, H, W): zeros (removal without changing shapes), its per-sample, per-channel spatial
    mean (keeps the first moment, removes the layout), or `x * scale`."""
    check_mode(mode)
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    return x * scale


def split(x: torch.Tensor, skip: Site) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone, skip) halves of the concatenated input of the up ResNet `skip.path`."""
    return x[:, : x.shape[1] - skip.channels], x[:, x.shape[1] - skip.channels:]
