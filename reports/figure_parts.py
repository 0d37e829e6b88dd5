"""Parts the figure modules share: table checks, image arrays, colour scales, labelled heatmap panels, tick fitting,
point labels placed without collisions."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.text import Text
from matplotlib.transforms import Bbox

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


# Label offsets in points, tried in order: beside the marker first, then farther out with a leader line.
_RINGS = (3.0, 9.0, 16.0)
_DIRECTIONS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def overlapping_pairs(boxes, pad: float = 0.0) -> list[tuple[int, int]]:
    """Index pairs of display-space boxes (matplotlib ``Bbox``) that overlap or come closer than ``pad`` pixels."""
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].x0 < boxes[j].x1 + pad and boxes[j].x0 < boxes[i].x1 + pad
            and boxes[i].y0 < boxes[j].y1 + pad and boxes[j].y0 < boxes[i].y1 + pad]


def place_labels(ax, points: Sequence[tuple[float, float]], labels: Sequence[str], colours: Sequence[str], *,
                 marker_pt: float = 2.0, fontsize: float = 6, pad_px: float = 1.0) -> list | None:
    """Label each data point where its text overlaps no other label or marker (``marker_pt``: marker radius) and
    stays inside the axes (greedy, first free offset of :data:`_RINGS` × :data:`_DIRECTIONS`); returns the
    annotations, or None with nothing drawn when some label has no free place (the caller then uses a legend).

    Decided on rendered extents with the layout frozen first (``fig.set_layout_engine("none")``), so saving
    cannot move the axes under the labels."""
    fig = ax.figure
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in points:  # every marker is an obstacle
        cx, cy = ax.transData.transform((x, y))
        r = marker_pt * px_per_pt
        taken.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    placed = []
    for (x, y), label, colour in zip(points, labels, colours):
        for ring in _RINGS:
            done = False
            for dx, dy in _DIRECTIONS:
                ann = ax.annotate(label, (x, y), xytext=(dx * ring, dy * ring), textcoords="offset points",
                                  ha={1: "left", -1: "right", 0: "center"}[dx],
                                  va={1: "bottom", -1: "top", 0: "center"}[dy], fontsize=fontsize, color=colour,
                                  arrowprops=None if ring == _RINGS[0] else dict(arrowstyle="-", lw=0.4,
                                                                                 color=colour, shrinkA=0, shrinkB=2))
                ann.update_positions(renderer)
                box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
                inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
                if inside and not any(overlapping_pairs([box, t], pad_px) for t in taken):
                    taken.append(box)
                    placed.append(ann)
                    done = True
                    break
                ann.remove()
            if done:
                break
        else:
            for a in placed:
                a.remove()
            return None
    return placed
