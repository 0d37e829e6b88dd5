"""Pure maths from aggregated cross-attention to word heatmaps (DAAM, Tang et al. 2023).

DAAM's recipe, as its code does it (``daam/trace.py`` ``compute_global_heat_map``, ``daam/heatmap.py``
``WordHeatMap.expand_as``):

1. sum each (layer, head) map over the time steps;
2. upsample every (layer, head) map bicubically to one common grid -- the latent grid, 64x64 for SD 1.x at 512 px,
   which is also its finest attention grid -- and clamp bicubic's undershoot at 0, head by head;
3. average over all (layer, head) pairs, so every head weighs the same (in SD 1.x every layer has 8 heads; where
   head counts differ, as in SD 2.x and tiny_sd, a layer with more heads weighs more);
4. merge a multi-token word by the mean of its tokens' maps;
5. upsample the word's map bicubically to the image and min-max normalise it to [0, 1] (no clamp here);
6. threshold at tau (0.4 in the paper).

The layers are those of the down and up blocks: DAAM hooks no mid block (`CrossAttentionProbe.daam_layers`).
Everything here is a small function of tensors so it can be tested on hand-built attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mean_over_bins(total: torch.Tensor, count: torch.Tensor, bins=None) -> torch.Tensor:
    """Average attention over the selected timestep bins, weighting every recorded UNet call equally.

    total: (n_bins, ...) sums of attention; count: (n_bins,) calls per bin.
    """
    if bins is not None:
        idx = torch.as_tensor(list(bins), dtype=torch.long, device=total.device)
        total, count = total.index_select(0, idx), count.index_select(0, idx)
    return total.sum(0) / count.sum().clamp_min(1)


def token_map(attn: torch.Tensor, tokens) -> torch.Tensor:
    """(B, heads, h, w, T) attention -> (B, h, w): sum of the word's tokens, mean over heads."""
    idx = torch.as_tensor(list(tokens), dtype=torch.long, device=attn.device)
    return attn.index_select(-1, idx).sum(-1).mean(1)


def token_mass(attn: torch.Tensor, spans: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """(B, heads, h, w, T) attention -> {span name: (B,) share of all attention on the span's tokens}.

    Shares are averaged over heads and query positions, so they sum to 1 over spans covering all T tokens.
    This is where the softmax mass goes: SD-style UNets park most of it on the start token and on the padding
    after the prompt (which, in a causal text encoder, carries a summary of the whole prompt).
    """
    per_token = attn.mean(dim=(1, 2, 3))  # (B, T)
    return {name: per_token[:, list(idx)].sum(-1) if idx else per_token.new_zeros(per_token.shape[0])
            for name, idx in spans.items()}


def upsample(maps: torch.Tensor, size: tuple[int, int], clamp: bool = True) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) bicubic; clamped at 0 by default (bicubic undershoots below zero; DAAM clamps
    the per-head maps it brings to the latent grid, not the word map it brings to the image)."""
    if tuple(maps.shape[-2:]) != tuple(size):
        lead = maps.shape[:-2]
        maps = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=tuple(size), mode="bicubic",
                             align_corners=False).reshape(*lead, *size)
    return maps.clamp_min(0) if clamp else maps


def normalise(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise every map of (B, H, W) to [0, 1] (DAAM's `expand_as`)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + eps)[:, None, None]


def finest_grid(grids) -> tuple[int, int]:
    """The largest of some (h, w) attention grids: DAAM's common (latent) grid."""
    return max((tuple(hw) for hw in grids), key=lambda hw: hw[0] * hw[1])


def token_maps(layer_attn: list[torch.Tensor], tokens, grid: tuple[int, int]) -> torch.Tensor:
    """DAAM's global heat map of `tokens`: (B, len(tokens), *grid).

    Every (layer, head) map of each token is upsampled to `grid` and clamped at 0, then all (layer, head) maps are
    averaged (steps 2-3 of the recipe above).
    """
    idx = torch.as_tensor(list(tokens), dtype=torch.long, device=layer_attn[0].device)
    total, n_heads = 0, 0
    for a in layer_attn:
        per_head = a.index_select(-1, idx).permute(0, 1, 4, 2, 3)  # (B, heads, tokens, h, w)
        total = total + upsample(per_head, grid).sum(1)
        n_heads += a.shape[1]
    return total / n_heads


def propagate(maps: torch.Tensor, affinity: torch.Tensor, power: int) -> torch.Tensor:
    """Self-attention propagation of (B, N, h, w) maps: vec(M) <- S^power vec(M), S the (B, h*w, h*w) row-stochastic
    self-attention on the maps' grid, so each pixel takes the affinity-weighted mean of the pixels it attends to.

    Training-free segmentation with diffusion models refines cross-attention maps this way (Dataset Diffusion, Nguyen
    et al. 2023: S^tau times the cross-attention map; SeeDiff and iSeg iterate the same product): where self-attention
    groups the pixels of one object, the map's mass spreads over the object and stops at its boundary. It helps only
    as far as self-attention does group objects (`benchmarks/heatmap_refinement.py` measures that on tiny_sd)."""
    if power < 0:
        raise ValueError(f"propagation power must be >= 0, got {power}")
    b, n, h, w = maps.shape
    if affinity.shape != (b, h * w, h * w):
        raise ValueError(f"affinity of shape {tuple(affinity.shape)} does not fit maps on a {h}x{w} grid "
                         f"(expected {(b, h * w, h * w)})")
    flat = maps.reshape(b, n, h * w).transpose(1, 2).to(affinity.dtype)  # (B, h*w, N)
    for _ in range(power):
        flat = affinity @ flat
    return flat.transpose(1, 2).reshape(b, n, h, w)


def words_heatmaps(layer_attn: list[torch.Tensor], words: dict[str, tuple[int, ...]], size: tuple[int, int],
                   per_pixel_over=None, grid: tuple[int, int] | None = None, affinity: torch.Tensor | None = None,
                   power: int = 0, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """DAAM word heatmaps {word: (B, H, W) in [0, 1]} of one prompt's `words` (word -> its token positions) from
    per-layer attention [(B, heads, h, w, T)]; each token's global map is computed once for all words.

    `grid`: the common grid of step 2 (default: the finest of `layer_attn`; a probe passes its finest recorded
    grid, so a selection of coarse layers is still brought to the latent grid first, as DAAM's `factors=` is).
    `per_pixel_over` (the prompt's word tokens) first divides each word's map, pixel by pixel, by the summed maps of
    those tokens: DAAM's ``compute_global_heat_map(normalize=True)``, which drops the start token and padding "for
    proper probabilities" -- each pixel's map becomes the word's share among the prompt's words, so a start-token
    or padding sink that varies over the image no longer shapes the map.
    `affinity` (B, h*w, h*w) and `power` > 0: the token maps on `grid` are first propagated through self-attention
    (`propagate`); not part of DAAM's recipe.
    """
    if not layer_attn:
        raise ValueError("no attention layers selected")
    grid = grid or finest_grid(a.shape[2:4] for a in layer_attn)
    needed = sorted({t for toks in words.values() for t in toks} | set(per_pixel_over or ()))
    maps = token_maps(layer_attn, needed, grid)
    if power:
        maps = propagate(maps, affinity, power)
    col = {t: i for i, t in enumerate(needed)}
    denom = None if per_pixel_over is None else maps[:, [col[t] for t in per_pixel_over]].sum(1) + eps
    out = {}
    for w, toks in words.items():
        word = maps[:, [col[t] for t in toks]].mean(1)
        out[w] = normalise(upsample(word if denom is None else word / denom, size, clamp=False))
    return out


def word_heatmap(layer_attn: list[torch.Tensor], tokens, size: tuple[int, int], per_pixel_over=None,
                 grid: tuple[int, int] | None = None, eps: float = 1e-6) -> torch.Tensor:
    """One word's DAAM heatmap (B, H, W) in [0, 1]; see `words_heatmaps`."""
    return words_heatmaps(layer_attn, {"": tuple(tokens)}, size, per_pixel_over, grid, eps=eps)[""]


def spatial_entropy(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy of (B, h, w) maps seen as spatial distributions, divided by log(h*w) -> [0, 1].

    1 means the word attends uniformly over the image; small values mean a localised map.
    """
    p = maps.flatten(1).clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(eps)
    n = p.shape[1]
    return -(p * (p + eps).log()).sum(1) / math.log(n) if n > 1 else torch.zeros(p.shape[0])


def token_entropy(probs: torch.Tensor, mean_queries: bool = True) -> torch.Tensor:
    """Entropy (nats) of attention rows over tokens, averaged over queries (or summed, ``mean_queries=False``):
    (B, heads, Q, T) -> (B, heads).

    `torch.special.entr` (-p log p, 0 at p = 0) is one kernel where -(p * log(p + eps)) was four, and one reduction
    runs over tokens and queries at once: this runs for every attention layer at every UNet call, where launches, not
    arithmetic, are the probe's cost on a GPU (the probe sums, and divides by the query count when it reads out)."""
    ent = torch.special.entr(probs).sum((-2, -1))
    return ent / probs.shape[-2] if mean_queries else ent


def threshold(heat: torch.Tensor, tau: float) -> torch.Tensor:
    return heat > tau
