"""Parts the figure modules share: table checks, image arrays, colour scales, labelled heatmap panels, tick fitting."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm

from .style import DIVERGING_CMAP, SEQUENTIAL_CMAP


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming the missing columns (or the empty table) instead of drawing an empty axis."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; got {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what}: the table is empty")


def to_image_array(image) -> np.ndarray:
    """HxW or HxWxC array in [0, 1] from a PIL image, a path, a uint8 array or a float array."""
    if isinstance(image, (str, Path)):
        from PIL import Image
        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW tensors from torch code
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def ordered_unique(values) -> list:
    """Unique values in order of first appearance: probes write layers/blocks in forward order, keep it."""
    return list(dict.fromkeys(values))


def grid_shape(n: int, ncols: int | None, max_cols: int = 6) -> tuple[int, int]:
    """(rows, columns) of a panel grid holding ``n`` panels, ``ncols`` wide or at most ``max_cols``."""
    cols = ncols or min(n, max_cols)
    return math.ceil(n / cols), cols


def norm_for(values: np.ndarray):
    """Diverging colour scale centred at 0 when the data has both signs, otherwise a sequential one."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize(0.0, 1.0), SEQUENTIAL_CMAP
    lo, hi = float(finite.min()), float(finite.max())
    if lo < 0.0 < hi:
        bound = max(-lo, hi)
        return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound), DIVERGING_CMAP
    if lo == hi:
        hi = lo + (abs(lo) or 1.0) * 1e-6
    return Normalize(lo, hi), SEQUENTIAL_CMAP


def heatmap_panel(ax, matrix: pd.DataFrame, *, title: str, xlabel: str, ylabel: str, fig, annotate: bool = False):
    """Draw ``matrix`` (rows × columns) on ``ax`` with labelled ticks and its own colour bar."""
    values = matrix.to_numpy(dtype=float)
    norm, cmap = norm_for(values)
    im = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns])  # rotated by fit_xticklabels
    ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=5,
                        color="white" if norm(v) < 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    return im


def fit_xticklabels(fig, gap_px: float = 2.0):
    """Rotate an axes' x tick labels by 90 degrees where, laid out, neighbours overlap; others stay horizontal.

    Decided on the rendered extents, not a label count; rotating only shortens an axes, so the layout at save time
    cannot bring the overlap back."""
    fig.canvas.draw()  # runs the constrained layout
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        if any(a.x1 + gap_px > b.x0 for a, b in zip(boxes, boxes[1:])):
            for t in ax.get_xticklabels():
                t.set_rotation(90)
                t.set_ha("center")
    return fig
