"""Where a UNet runs attention: its levels with cross-attention and the grid heights there, known before sampling.

Used by `runner` (the grid word heatmaps are built on, so `refine` can record its self-attention) and `preflight`
(the `self_attention=[...]` values a run may ask for).
"""

from __future__ import annotations


def _side_at(latent_h: int, level: int) -> int:
    for _ in range(level):  # each downsampler: stride-2 conv with padding 1, so ceil(h / 2)
        latent_h = -(-latent_h // 2)
    return latent_h


def attention_levels(unet) -> list[int]:
    """UNet levels holding cross-attention (transformer) blocks. Down block i runs at level i, the mid block at the
    last level, up block j at level n-1-j (a UNet need not be symmetric)."""
    n = len(unet.down_blocks)
    blocks = [(i, b) for i, b in enumerate(unet.down_blocks)] + [(n - 1 - j, b) for j, b in enumerate(unet.up_blocks)]
    blocks.append((n - 1, unet.mid_block))
    return sorted({i for i, b in blocks if getattr(b, "has_cross_attention", False)})


def attention_sides(unet, latent_h: int) -> list[int]:
    """Heights of the grids attention runs on for a latent of height `latent_h`, finest first: the values
    `self_attention=[...]` can ask for."""
    return [_side_at(latent_h, level) for level in attention_levels(unet)]


def heatmap_side(unet, latent_h: int) -> int:
    """Height of the grid word heatmaps are built on (the finest with cross-attention, DAAM's latent grid) for a
    latent of height `latent_h`. Known before sampling, so `refine` can ask for that grid's self-attention."""
    levels = attention_levels(unet)
    return _side_at(latent_h, levels[0] if levels else len(unet.down_blocks) - 1)
