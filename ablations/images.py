"""The job's sample grid, `samples.png` (docs/CONTRACTS.md, "Job files"): the same seeds in every variant."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: Path, ncol: int = 8) -> None:
    """A PNG grid of float images (N,3,H,W) in [0,1]: the same seeds, hence comparable cells, in every variant."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / ncol)
    grid = torch.ones(c, rows * h, min(n, ncol) * w)
    for i, im in enumerate(images):
        r, q = divmod(i, ncol)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
