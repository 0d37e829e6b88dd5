"""Pure maths from aggregated cross-attention to word heatmaps (DAAM, Tang et al. 2023).

DAAM's recipe (``daam/trace.py``, ``daam/heatmap.py``): per layer, average the heads, upsample the
map bicubically to a common size and clamp the overshoot of bicubic interpolation at 0; sum over
layers (those of the down and up blocks: DAAM hooks no mid block) and time steps; sum the word's tokens
(multi-token words become one map); then normalise to [0, 1] by min-max before thresholding at tau (0.4 in the
paper). Everything here is a small function
of tensors so it can be tested on hand-built attention.
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


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bicubic, clamped at 0 (bicubic overshoots below zero; DAAM clamps)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.clamp_min(0)
    up = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bicubic", align_corners=False)
    return up[:, 0].clamp_min(0)


def normalise(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise every map of (B, H, W) to [0, 1] (DAAM's `expand_image`)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + eps)[:, None, None]


def word_heatmap(layer_attn: list[torch.Tensor], tokens, size: tuple[int, int], per_pixel_over=None,
                 eps: float = 1e-6) -> torch.Tensor:
    """DAAM word heatmap (B, H, W) in [0, 1] from per-layer attention [(B, heads, h, w, T)].

    `per_pixel_over` (the prompt's word tokens) first divides the word's aggregated map, pixel by pixel, by the
    aggregated attention on those tokens: DAAM's ``compute_global_heat_map(normalize=True)``, which drops the
    start token and padding "for proper probabilities" -- each pixel's map becomes the word's share among the
    prompt's words, so a start-token or padding sink that varies over the image no longer shapes the map.
    """
    if not layer_attn:
        raise ValueError("no attention layers selected")
    total = sum(upsample(token_map(a, tokens), size) for a in layer_attn)
    if per_pixel_over is not None:
        total = total / (sum(upsample(token_map(a, per_pixel_over), size) for a in layer_attn) + eps)
    return normalise(total)


def spatial_entropy(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy of (B, h, w) maps seen as spatial distributions, divided by log(h*w) -> [0, 1].

    1 means the word attends uniformly over the image; small values mean a localised map.
    """
    p = maps.flatten(1).clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(eps)
    n = p.shape[1]
    return -(p * (p + eps).log()).sum(1) / math.log(n) if n > 1 else torch.zeros(p.shape[0])


def token_entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Entropy (nats) of attention rows over tokens, averaged over queries: (B, heads, Q, T) -> (B, heads)."""
    return -(probs * (probs + eps).log()).sum(-1).mean(-1)


def threshold(heat: torch.Tensor, tau: float) -> torch.Tensor:
    return heat > tau
