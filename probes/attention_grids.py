"""Where a UNet runs cross-attention, from the site map (`foundation.sites`): the grid heights there, known before
sampling. Used by `runner` (the grid word heatmaps are built on, so `refine` can record its self-attention) and
`preflight` (the `self_attention=[...]` values a run may ask for).
"""

from __future__ import annotations

from foundation import sites


def attention_sides(unet, latent_h: int) -> list[int]:
    """Heights of the grids cross-attention runs on for a latent of height `latent_h`, finest first."""
    return [sites.side(latent_h, level) for level in sites.levels(unet, "attn2")]


def heatmap_side(unet, latent_h: int) -> int:
    """Height of the grid word heatmaps are built on: the finest with cross-attention (DAAM's latent grid)."""
    levels = sites.levels(unet, "attn2")
    return sites.side(latent_h, levels[0] if levels else len(unet.down_blocks) - 1)
