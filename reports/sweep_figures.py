"""Figures of a sweep: metric dots with CIs, the quality–alignment trade-off and the per-variant sample grids, from
the tidy summary (``summary.csv``) and each job's ``samples.png``. Each function returns a ``Figure``."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from .figure_parts import grid_shape, ordered_unique, place_labels, require_columns, to_image_array
from .style import BASELINE_COLOUR, OKABE_ITO, ONE_COLUMN_IN, TWO_COLUMN_IN, paper_style

SUMMARY_COLUMNS = ("variant", "metric", "mean", "ci_lo", "ci_hi")


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
                width: float = TWO_COLUMN_IN, panel_aspect: float = 0.45, floors: Mapping[str, float] | None = None):
    """Mean and 95% CI of each metric per variant, a dot-and-whisker panel per metric (baseline grey, dashed line;
    ``floors``: metric → its real-vs-real floor, a dotted line no variant can be expected to pass).

    Dots rather than bars: metrics like FID have no meaningful zero for a bar to start from."""
    floors = floors or {}
    require_columns(summary, SUMMARY_COLUMNS, "metric_bars")
    metrics = list(metrics) if metrics is not None else ordered_unique(summary["metric"])
    variants = ordered_unique(summary["variant"])
    baseline = _baseline_of(summary)
    colours = _variant_colours(variants, baseline)
    rows, cols = grid_shape(len(metrics), ncols, max_cols=3)
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
            if np.isfinite(floors.get(metric, np.nan)):
                ax.axvline(floors[metric], color="black", lw=0.8, ls=":", zorder=0)
            ax.set_yticks(y, variants)
            ax.set_ylim(-0.6, len(variants) - 0.4)
            ax.set_title(metric + _arrow(summary, metric))
            ax.grid(axis="x", lw=0.3, color="0.85")
    return fig


def find_metric(metrics: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first of ``metrics`` named like one of ``candidates``: exact names first, then prefixes (``fid_clean``)."""
    lowered = {m.lower(): m for m in metrics}
    for c in candidates:
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

    ``x``/``y`` default to the first metric named like fid/fd and clip; axis labels carry ↑/↓."""
    require_columns(summary, SUMMARY_COLUMNS, "tradeoff")
    metrics = ordered_unique(summary["metric"])
    x = x or find_metric(metrics, ("fid", "fd", "kid"))
    y = y or find_metric(metrics, ("clip", "clip_score"))
    if x is None or y is None or x not in metrics or y not in metrics:
        raise ValueError(f"tradeoff: need an FID/FD metric and a CLIP metric; have {metrics}")
    variants = ordered_unique(summary["variant"])
    baseline = _baseline_of(summary)
    colours = _variant_colours(variants, baseline)
    sx = summary[summary["metric"] == x].set_index("variant")
    sy = summary[summary["metric"] == y].set_index("variant")
    drawn = []
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
            drawn.append(((rx["mean"], ry["mean"]), v))
        ax.set_xlabel(x + _arrow(summary, x))
        ax.set_ylabel(y + _arrow(summary, y))
        ax.grid(lw=0.3, color="0.85")
        # Names beside their points where they fit without touching; a cluster too tight for that gets a legend.
        if drawn and place_labels(ax, [p for p, _ in drawn], [v for _, v in drawn],
                                  [colours[v] for _, v in drawn]) is None:
            fig.set_layout_engine("constrained")
            fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(drawn), 4),
                       fontsize=6, handletextpad=0.2, columnspacing=0.8)
    return fig


def sample_grid(images_by_variant: Mapping[str, object], *, width: float = TWO_COLUMN_IN,
                title: str | None = None):
    """One row per variant showing its sample grid (``samples.png``: the same seeds for every variant).

    Values may be arrays, PIL images or paths; row heights follow each image's aspect ratio (square pixels)."""
    if not images_by_variant:
        raise ValueError("sample_grid: no images given")
    names = list(images_by_variant)
    imgs = [to_image_array(images_by_variant[n]) for n in names]
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
