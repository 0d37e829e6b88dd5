"""Paper figures drawn from tidy tables and arrays.

Every function here is pure: it takes data (DataFrames in the tidy formats of docs/CONTRACTS.md, numpy arrays,
PIL images or paths) and returns a ``matplotlib.figure.Figure`` drawn in the paper style; saving is left to
:func:`reports.style.save_figure`, so callers decide where files go::

    fig = attention_grid(image, heatmaps)
    save_figure(fig, out / "heatmaps")      # heatmaps.pdf + heatmaps.png

Functions raise ``ValueError`` naming the missing columns/metrics instead of drawing an empty axis.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from matplotlib.colors import Normalize, TwoSlopeNorm

from .style import (BASELINE_COLOUR, DIVERGING_CMAP, HEATMAP_CMAP, OKABE_ITO, ONE_COLUMN_IN, SEQUENTIAL_CMAP,
                    TWO_COLUMN_IN, paper_style)

MAPS_COLUMNS = ("word", "token_index", "layer", "resolution", "t_bin", "t_lo", "t_hi", "mean", "max", "entropy")
TIMESTEP_COLUMNS = ("block", "timestep", "metric", "value")
SKIP_COLUMNS = ("skip", "timestep", "metric", "value")
SUMMARY_COLUMNS = ("variant", "metric", "mean", "ci_lo", "ci_hi")


# --------------------------------------------------------------------------------------------------- helpers
def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; got {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what}: the table is empty")


def _to_image_array(image) -> np.ndarray:
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


def _ordered_unique(values) -> list:
    """Unique values in order of first appearance: probes write layers/blocks in forward order, keep it."""
    return list(dict.fromkeys(values))


def _norm_for(values: np.ndarray):
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


def _heatmap(ax, matrix: pd.DataFrame, *, title: str, xlabel: str, ylabel: str, fig, annotate: bool = False):
    """Draw ``matrix`` (rows × columns) on ``ax`` with labelled ticks and its own colour bar."""
    values = matrix.to_numpy(dtype=float)
    norm, cmap = _norm_for(values)
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

    Decided on the rendered, laid-out extents rather than on a label count: five "800–1000" bins overlap in a
    narrow panel while ten single digits do not. Rotating only makes the axes shorter, never narrower, so the
    final constrained layout at save time cannot bring the overlap back.
    """
    fig.canvas.draw()  # runs the constrained layout
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        if any(a.x1 + gap_px > b.x0 for a, b in zip(boxes, boxes[1:])):
            for t in ax.get_xticklabels():
                t.set_rotation(90)
                t.set_ha("center")
    return fig


def _grid_shape(n: int, ncols: int | None, max_cols: int = 6) -> tuple[int, int]:
    cols = ncols or min(n, max_cols)
    return math.ceil(n / cols), cols


# --------------------------------------------------------------------------------------------------- probes
def attention_grid(image, heatmaps: Mapping[str, np.ndarray], *, words: Sequence[str] | None = None,
                   ncols: int | None = None, alpha: float = 0.55, normalize: str = "per_word",
                   width: float = TWO_COLUMN_IN, title: str | None = None):
    """The generated image followed by one overlay per word (DAAM-style heatmap grid).

    ``heatmaps`` maps a word to an HxW array; maps of another size than the image are stretched over it (the probe
    upsamples already; this keeps non-square images right). ``normalize``: "per_word" scales each map to [0, 1]
    (shape of attention, DAAM's convention), "shared" uses one scale for all words (compares magnitudes).
    """
    if not heatmaps:
        raise ValueError("attention_grid: no heatmaps given")
    words = list(words) if words is not None else list(heatmaps)
    unknown = [w for w in words if w not in heatmaps]
    if unknown:
        raise ValueError(f"attention_grid: no heatmap for {unknown}; have {list(heatmaps)}")
    if normalize not in ("per_word", "shared"):
        raise ValueError("normalize must be 'per_word' or 'shared'")
    img = _to_image_array(image)
    h, w = img.shape[:2]
    maps = {k: np.asarray(heatmaps[k], dtype=np.float32) for k in words}
    shared = (min(float(m.min()) for m in maps.values()), max(float(m.max()) for m in maps.values()))

    rows, cols = _grid_shape(len(words) + 1, ncols)
    panel = width / cols
    with paper_style():
        fig, axes = plt.subplots(rows, cols, figsize=(width, round(rows * panel * h / w + 0.25, 3)), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        axes.flat[0].imshow(img, extent=(0, w, h, 0))
        axes.flat[0].set_title("image")
        im = None
        for ax, word in zip(axes.flat[1:], words):
            m = maps[word]
            lo, hi = (float(m.min()), float(m.max())) if normalize == "per_word" else shared
            scaled = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            ax.imshow(img, extent=(0, w, h, 0))
            im = ax.imshow(scaled, extent=(0, w, h, 0), cmap=HEATMAP_CMAP, alpha=alpha, vmin=0.0, vmax=1.0,
                           interpolation="bicubic")
            ax.set_title(word)
        if im is not None:
            cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01, aspect=30)
            cbar.set_label("attention (per-word scale)" if normalize == "per_word" else "attention")
        if title:
            fig.suptitle(title)
    return fig


def attention_breakdown(df: pd.DataFrame, *, value: str = "mean", width: float = TWO_COLUMN_IN,
                        annotate: bool = False):
    """Word × layer and word × timestep-bin heatmaps from an attention ``maps.csv`` table.

    Each panel averages ``value`` ("mean", "max" or "entropy") over the other axis ("max" is maxed, since a
    maximum of maxima is what the column means). Multi-token words (several ``token_index`` per word) are merged
    the same way. Words keep prompt order, layers keep the probe's forward order, timestep bins run from noisy
    (high t) to clean (low t), the order of sampling.
    """
    _require(df, MAPS_COLUMNS, "attention_breakdown")
    if value not in ("mean", "max", "entropy"):
        raise ValueError(f"value must be mean, max or entropy, got {value!r}")
    agg = "max" if value == "max" else "mean"
    words = list(df.groupby("word", sort=False)["token_index"].min().sort_values().index)
    layers = _ordered_unique(df["layer"])
    res = df.groupby("layer", sort=False)["resolution"].first()
    by_layer = df.pivot_table(index="word", columns="layer", values=value, aggfunc=agg).reindex(index=words,
                                                                                              columns=layers)
    by_layer.columns = [f"{l} ({res[l]})" for l in layers]
    bins = (df.groupby("t_bin")[["t_lo", "t_hi"]].first().sort_values("t_hi", ascending=False))
    by_t = df.pivot_table(index="word", columns="t_bin", values=value, aggfunc=agg).reindex(index=words,
                                                                                           columns=bins.index)
    by_t.columns = [f"{int(r.t_lo)}–{int(r.t_hi)}" for r in bins.itertuples()]
    height = max(1.8, 0.22 * len(words) + 1.6 + 0.05 * max(len(str(l)) for l in by_layer.columns))
    with paper_style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(width, round(height, 3)),
                                     gridspec_kw={"width_ratios": [max(len(layers), 2), max(len(bins), 2)]})
        _heatmap(a1, by_layer, title=f"{value} attention by layer", xlabel="layer (resolution)", ylabel="word",
                 fig=fig, annotate=annotate)
        _heatmap(a2, by_t, title=f"{value} attention by timestep", xlabel="timestep bin (noisy → clean)",
                 ylabel="", fig=fig, annotate=annotate)
        fit_xticklabels(fig)
    return fig


def _metric_panels(df: pd.DataFrame, row: str, *, metrics: Sequence[str] | None, width: float, what: str,
                   annotate: bool):
    """One ``row`` × timestep heatmap per metric, stacked vertically (shared by timestep and skip figures)."""
    metrics = list(metrics) if metrics is not None else _ordered_unique(df["metric"])
    unknown = [m for m in metrics if m not in set(df["metric"])]
    if unknown:
        raise ValueError(f"{what}: metrics {unknown} not in the table; have {_ordered_unique(df['metric'])}")
    rows = _ordered_unique(df[row])
    timesteps = sorted(df["timestep"].unique(), reverse=True)  # sampling order: noisy first
    per_panel = max(1.2, 0.16 * len(rows) + 0.8)
    with paper_style():
        fig, axes = plt.subplots(len(metrics), 1, figsize=(width, round(per_panel * len(metrics), 3)),
                                 squeeze=False)
        for ax, metric in zip(axes[:, 0], metrics):
            sub = df[df["metric"] == metric]
            matrix = sub.pivot_table(index=row, columns="timestep", values="value", aggfunc="mean")
            matrix = matrix.reindex(index=[r for r in rows if r in matrix.index], columns=timesteps)
            matrix.columns = [str(int(t)) if float(t).is_integer() else f"{t:g}" for t in matrix.columns]
            _heatmap(ax, matrix, title=metric, xlabel="timestep (noisy → clean)", ylabel=row, fig=fig,
                     annotate=annotate)
        fit_xticklabels(fig)
    return fig


def timestep_heatmap(df: pd.DataFrame, *, metrics: Sequence[str] | None = None, width: float = TWO_COLUMN_IN,
                     annotate: bool = False):
    """Time-embedding effect per UNet block × timestep, one panel per metric (``timestep.csv``)."""
    _require(df, TIMESTEP_COLUMNS, "timestep_heatmap")
    return _metric_panels(df, "block", metrics=metrics, width=width, what="timestep_heatmap", annotate=annotate)


def skip_heatmap(df: pd.DataFrame, *, metrics: Sequence[str] | None = None, width: float = TWO_COLUMN_IN,
                 annotate: bool = False):
    """Skip-connection contribution per skip × timestep, one panel per metric (``skips.csv``)."""
    _require(df, SKIP_COLUMNS, "skip_heatmap")
    return _metric_panels(df, "skip", metrics=metrics, width=width, what="skip_heatmap", annotate=annotate)


# --------------------------------------------------------------------------------------------------- sweeps
def _arrow(summary: pd.DataFrame, metric: str) -> str:
    if "higher_is_better" not in summary.columns:
        return ""
    hib = summary.loc[summary["metric"] == metric, "higher_is_better"].dropna()
    if hib.empty:
        return ""
    return " ↑" if bool(hib.iloc[0]) else " ↓"


def _variant_colours(variants: Sequence[str], baseline: str | None) -> dict[str, str]:
    colours, k = {}, 0
    for v in variants:
        if v == baseline:
            colours[v] = BASELINE_COLOUR
        else:
            colours[v] = OKABE_ITO[k % len(OKABE_ITO)]
            k += 1
    return colours


def _baseline_of(summary: pd.DataFrame) -> str | None:
    if "is_baseline" in summary.columns:
        rows = summary.loc[summary["is_baseline"].fillna(False).astype(bool), "variant"]
        return rows.iloc[0] if len(rows) else None
    return None


def metric_bars(summary: pd.DataFrame, *, metrics: Sequence[str] | None = None, ncols: int | None = None,
                width: float = TWO_COLUMN_IN, panel_aspect: float = 0.45):
    """Mean and 95% CI of each metric per variant (dot-and-whisker, one panel per metric).

    ``summary`` is the tidy summary (``reports.summarize`` / ``summary.csv``): columns ``variant, metric, mean,
    ci_lo, ci_hi`` and optionally ``higher_is_better`` (adds ↑/↓ to titles) and ``is_baseline`` (grey baseline with
    a reference line). Dots rather than bars: metrics like FID have no meaningful zero for a bar to start from.
    """
    _require(summary, SUMMARY_COLUMNS, "metric_bars")
    metrics = list(metrics) if metrics is not None else _ordered_unique(summary["metric"])
    variants = _ordered_unique(summary["variant"])
    baseline = _baseline_of(summary)
    colours = _variant_colours(variants, baseline)
    rows, cols = _grid_shape(len(metrics), ncols, max_cols=3)
    panel_w = width / cols
    height = max(panel_w * panel_aspect, 0.18 * len(variants) + 0.7)
    with paper_style():
        fig, axes = plt.subplots(rows, cols, figsize=(width, round(rows * height, 3)), squeeze=False)
        for ax in axes.flat[len(metrics):]:
            ax.set_axis_off()
        for ax, metric in zip(axes.flat, metrics):
            sub = summary[summary["metric"] == metric].set_index("variant").reindex(variants)
            y = np.arange(len(variants))[::-1]
            for yi, v in zip(y, variants):
                r = sub.loc[v]
                if not np.isfinite(r["mean"]):
                    ax.text(0.02, yi, "no result", transform=ax.get_yaxis_transform(), va="center", fontsize=6,
                            color="0.4")
                    continue
                lo, hi = r["ci_lo"], r["ci_hi"]
                xerr = None if not (np.isfinite(lo) and np.isfinite(hi)) else [[r["mean"] - lo], [hi - r["mean"]]]
                ax.errorbar(r["mean"], yi, xerr=xerr, fmt="o", color=colours[v], ecolor=colours[v])
            if baseline is not None and np.isfinite(sub.loc[baseline, "mean"]):
                ax.axvline(sub.loc[baseline, "mean"], color=BASELINE_COLOUR, lw=0.6, ls="--", zorder=0)
            ax.set_yticks(y, variants)
            ax.set_ylim(-0.6, len(variants) - 0.4)
            ax.set_title(metric + _arrow(summary, metric))
            ax.grid(axis="x", lw=0.3, color="0.85")
    return fig


def find_metric(metrics: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {m.lower(): m for m in metrics}
    for c in candidates:  # exact names first, then prefixes (fid_clean, clip_score_vitb32, ...)
        if c in lowered:
            return lowered[c]
    for c in candidates:
        for low, m in lowered.items():
            if low.startswith(c):
                return m
    return None


def tradeoff(summary: pd.DataFrame, *, x: str | None = None, y: str | None = None, width: float = ONE_COLUMN_IN,
             aspect: float = 0.8):
    """Quality–alignment trade-off: FID (or FD) against CLIP score per variant, with 95% CI whiskers on both.

    ``x``/``y`` default to the first metric named like fid/fd and clip. Axis labels carry ↑/↓ so the good corner
    is readable without the caption.
    """
    _require(summary, SUMMARY_COLUMNS, "tradeoff")
    metrics = _ordered_unique(summary["metric"])
    x = x or find_metric(metrics, ("fid", "fd", "kid"))
    y = y or find_metric(metrics, ("clip", "clip_score"))
    if x is None or y is None or x not in metrics or y not in metrics:
        raise ValueError(f"tradeoff: need an FID/FD metric and a CLIP metric; have {metrics}")
    variants = _ordered_unique(summary["variant"])
    baseline = _baseline_of(summary)
    colours = _variant_colours(variants, baseline)
    sx = summary[summary["metric"] == x].set_index("variant")
    sy = summary[summary["metric"] == y].set_index("variant")
    with paper_style():
        fig, ax = plt.subplots(figsize=(width, round(width * aspect, 3)))
        for v in variants:
            if v not in sx.index or v not in sy.index:
                continue
            rx, ry = sx.loc[v], sy.loc[v]
            if not (np.isfinite(rx["mean"]) and np.isfinite(ry["mean"])):
                continue
            xerr = [[rx["mean"] - rx["ci_lo"]], [rx["ci_hi"] - rx["mean"]]] if np.isfinite(rx["ci_lo"]) else None
            yerr = [[ry["mean"] - ry["ci_lo"]], [ry["ci_hi"] - ry["mean"]]] if np.isfinite(ry["ci_lo"]) else None
            ax.errorbar(rx["mean"], ry["mean"], xerr=xerr, yerr=yerr, fmt="o", color=colours[v],
                        ecolor=colours[v], label=v)
            ax.annotate(v, (rx["mean"], ry["mean"]), xytext=(3, 3), textcoords="offset points", fontsize=6)
        ax.set_xlabel(x + _arrow(summary, x))
        ax.set_ylabel(y + _arrow(summary, y))
        ax.grid(lw=0.3, color="0.85")
    return fig


def sample_grid(images_by_variant: Mapping[str, object], *, width: float = TWO_COLUMN_IN,
                title: str | None = None):
    """One row per variant showing its sample grid (``samples.png``: the same seeds for every variant).

    Values may be arrays, PIL images or paths. Row heights follow each image's aspect ratio, so grids of any
    shape keep their pixels square.
    """
    if not images_by_variant:
        raise ValueError("sample_grid: no images given")
    names = list(images_by_variant)
    imgs = [_to_image_array(images_by_variant[n]) for n in names]
    label_w = 0.9  # inches reserved for the variant name on the left
    img_w = width - label_w
    heights = [img_w * im.shape[0] / im.shape[1] for im in imgs]
    total_h = sum(heights) + 0.1 * len(imgs) + (0.25 if title else 0.05)
    with paper_style():
        fig, axes = plt.subplots(len(imgs), 1, figsize=(width, round(total_h, 3)), squeeze=False,
                                 gridspec_kw={"height_ratios": heights}, layout="constrained")
        for ax, name, im in zip(axes[:, 0], names, imgs):
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
        if title:
            fig.suptitle(title)
    return fig
