"""Figures of probe outputs: attention overlays and breakdowns, timestep and skip heatmaps, time-embedding cosines,
token attributions and heatmap IoU (``maps.csv``, ``timestep.csv``, ``skips.csv``, ``attributions.csv``,
``miou.csv`` of docs/CONTRACTS.md and docs/probes.md). Each function returns a ``Figure``."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from foundation.sites import short_names

from .figure_parts import fit_xticklabels, grid_shape, heatmap_panel, ordered_unique, require_columns, to_image_array
from .style import DIVERGING_CMAP, HEATMAP_CMAP, OKABE_ITO, ONE_COLUMN_IN, TWO_COLUMN_IN, paper_style

MAPS_COLUMNS = ("word", "token_index", "layer", "resolution", "t_bin", "t_lo", "t_hi", "mean", "max", "entropy")
TIMESTEP_COLUMNS = ("block", "timestep", "metric", "value")
SKIP_COLUMNS = ("skip", "timestep", "metric", "value")


def attention_grid(image, heatmaps: Mapping[str, np.ndarray], *, words: Sequence[str] | None = None,
                   ncols: int | None = None, alpha: float = 0.55, normalize: str = "per_word",
                   width: float = TWO_COLUMN_IN, title: str | None = None):
    """The generated image followed by one overlay per word (DAAM-style heatmap grid), maps stretched over the image.

    ``normalize``: "per_word" scales each map to [0, 1] (shape of attention, DAAM's convention), "shared" uses one
    scale for all words (compares magnitudes)."""
    if not heatmaps:
        raise ValueError("attention_grid: no heatmaps given")
    words = list(words) if words is not None else list(heatmaps)
    unknown = [w for w in words if w not in heatmaps]
    if unknown:
        raise ValueError(f"attention_grid: no heatmap for {unknown}; have {list(heatmaps)}")
    if normalize not in ("per_word", "shared"):
        raise ValueError("normalize must be 'per_word' or 'shared'")
    img = to_image_array(image)
    h, w = img.shape[:2]
    maps = {k: np.asarray(heatmaps[k], dtype=np.float32) for k in words}
    shared = (min(float(m.min()) for m in maps.values()), max(float(m.max()) for m in maps.values()))

    rows, cols = grid_shape(len(words) + 1, ncols)
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


def layer_names(df: pd.DataFrame) -> pd.DataFrame:
    """One row per layer of ``maps.csv`` (forward order): its module ``path``, the site map's ``short`` name
    (``foundation.sites.short_names``) and the axis ``label`` "down.0.attn.1 16×16" the figures print."""
    layers = ordered_unique(df["layer"])
    res = df.groupby("layer", sort=False)["resolution"].first()
    short = short_names(layers)
    side = {l: str(res[l]).replace("x", "×") if isinstance(res[l], str) else f"{res[l]}×{res[l]}" for l in layers}
    return pd.DataFrame({"path": layers, "short": [short[l] for l in layers],
                         "label": [f"{short[l]} {side[l]}" for l in layers]})


def attention_breakdown(df: pd.DataFrame, *, value: str = "mean", width: float = TWO_COLUMN_IN,
                        annotate: bool = False):
    """Word × layer and word × timestep-bin heatmaps of ``value`` from ``maps.csv``, averaged over the other axis
    ("max" is maxed). Words keep prompt order, layers forward order, bins run noisy (high t) to clean."""
    require_columns(df, MAPS_COLUMNS, "attention_breakdown")
    if value not in ("mean", "max", "entropy"):
        raise ValueError(f"value must be mean, max or entropy, got {value!r}")
    agg = "max" if value == "max" else "mean"
    words = list(df.groupby("word", sort=False)["token_index"].min().sort_values().index)
    names = layer_names(df)
    layers = list(names["path"])
    by_layer = df.pivot_table(index="word", columns="layer", values=value, aggfunc=agg).reindex(index=words,
                                                                                              columns=layers)
    by_layer.columns = list(names["label"])
    bins = (df.groupby("t_bin")[["t_lo", "t_hi"]].first().sort_values("t_hi", ascending=False))
    by_t = df.pivot_table(index="word", columns="t_bin", values=value, aggfunc=agg).reindex(index=words,
                                                                                           columns=bins.index)
    by_t.columns = [f"{int(r.t_lo)}–{int(r.t_hi)}" for r in bins.itertuples()]
    height = max(1.8, 0.22 * len(words) + 1.6 + 0.05 * max(len(str(l)) for l in by_layer.columns))
    with paper_style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(width, round(height, 3)),
                                     gridspec_kw={"width_ratios": [max(len(layers), 2), max(len(bins), 2)]})
        heatmap_panel(a1, by_layer, title=f"{value} attention by layer", xlabel="layer (site name, resolution)",
                      ylabel="word", fig=fig, annotate=annotate)
        heatmap_panel(a2, by_t, title=f"{value} attention by timestep", xlabel="timestep bin (noisy → clean)",
                      ylabel="", fig=fig, annotate=annotate)
        fit_xticklabels(fig)
    return fig


def _metric_panels(df: pd.DataFrame, row: str, *, metrics: Sequence[str] | None, width: float, what: str,
                   annotate: bool):
    """One ``row`` × timestep heatmap per metric, stacked vertically (shared by timestep and skip figures)."""
    metrics = list(metrics) if metrics is not None else ordered_unique(df["metric"])
    unknown = [m for m in metrics if m not in set(df["metric"])]
    if unknown:
        raise ValueError(f"{what}: metrics {unknown} not in the table; have {ordered_unique(df['metric'])}")
    rows = ordered_unique(df[row])
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
            heatmap_panel(ax, matrix, title=metric, xlabel="timestep (noisy → clean)", ylabel=row, fig=fig,
                          annotate=annotate)
        fit_xticklabels(fig)
    return fig


def timestep_heatmap(df: pd.DataFrame, *, metrics: Sequence[str] | None = None, width: float = TWO_COLUMN_IN,
                     annotate: bool = False):
    """Time-embedding effect per UNet block × timestep, one panel per metric (``timestep.csv``)."""
    require_columns(df, TIMESTEP_COLUMNS, "timestep_heatmap")
    return _metric_panels(df, "block", metrics=metrics, width=width, what="timestep_heatmap", annotate=annotate)


def skip_heatmap(df: pd.DataFrame, *, metrics: Sequence[str] | None = None, width: float = TWO_COLUMN_IN,
                 annotate: bool = False):
    """Skip-connection contribution per skip × timestep, one panel per metric (``skips.csv``)."""
    require_columns(df, SKIP_COLUMNS, "skip_heatmap")
    return _metric_panels(df, "skip", metrics=metrics, width=width, what="skip_heatmap", annotate=annotate)


def temb_cosine(matrix: np.ndarray, timesteps: Sequence[int]):
    """Cosine similarity of the time embeddings of every pair of ``timesteps`` (``temb_cosine.csv``)."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, ONE_COLUMN_IN * 0.85))
        im = ax.imshow(matrix, vmin=-1, vmax=1, cmap=DIVERGING_CMAP)
        ticks = range(len(timesteps))
        ax.set_xticks(ticks, [str(t) for t in timesteps], rotation=90)
        ax.set_yticks(ticks, [str(t) for t in timesteps])
        ax.set_xlabel("timestep")
        ax.set_ylabel("timestep")
        ax.set_title("time-embedding cosine similarity")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def token_attribution(tokens: pd.DataFrame):
    """Integrated-gradients attribution of the noise prediction to each word (``attributions.csv``), signed bars."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, ONE_COLUMN_IN * 0.7))
        labels = [f"{w}" for w in tokens["word"]]
        vals = tokens["attribution"].to_numpy()
        ax.bar(range(len(vals)), vals, color=[OKABE_ITO[0] if v >= 0 else OKABE_ITO[3] for v in vals])
        ax.set_xticks(range(len(vals)), labels, rotation=60)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("integrated gradients")
        ax.set_title("token attribution of the noise prediction")
    return fig


def iou_sweep(summary: pd.DataFrame):
    """mIoU (95% CI) against tau from ``miou.csv``, one line per (source, word type), all layers and steps."""
    s = summary[(summary["breakdown"] == "all") & (summary["word_type"].isin(["colour", "shape"]))]
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, ONE_COLUMN_IN * 0.75))
        for (src, wt), g in s.groupby(["source", "word_type"]):
            g = g.sort_values("tau")
            ax.plot(g["tau"], g["miou"], marker="o", ms=2, label=f"{src}: {wt}")
            ax.fill_between(g["tau"], g["ci_lo"], g["ci_hi"], alpha=0.2)
        ax.axvline(0.4, color="grey", lw=0.5, ls="--")
        ax.set_xlabel(r"threshold $\tau$")
        ax.set_ylabel("mIoU")
        ax.legend()
    return fig


def iou_layers(summary: pd.DataFrame, tau: float = 0.4):
    """Per layer: mIoU at ``tau`` and AUROC (95% CI) of every source's shape and colour words, beside DAAM's
    aggregate ("all"). AUROC < 0.5 marks a layer whose word maps point away from the object."""
    s = summary[(summary["tau"] == tau) & summary["word_type"].isin(["colour", "shape"])
                & (summary["breakdown"].str.startswith("layer=") | (summary["breakdown"] == "all"))]
    order = ["all"] + [b for b in dict.fromkeys(s["breakdown"]) if b != "all"]
    paths = [b.removeprefix("layer=") for b in order]
    short = short_names(paths)
    labels = [short[p] for p in paths]
    groups = list(s.groupby(["source", "word_type"]).groups)
    y = np.arange(len(order))
    height = 0.8 / max(len(groups), 1)
    with paper_style():
        fig, axes = plt.subplots(1, 2, sharey=True, figsize=(TWO_COLUMN_IN, 0.22 * len(order) + 0.9))
        for k, (src, wt) in enumerate(groups):
            g = s[(s["source"] == src) & (s["word_type"] == wt)].set_index("breakdown").reindex(order)
            for ax, col, lo, hi in ((axes[0], "miou", "ci_lo", "ci_hi"),
                                    (axes[1], "auroc", "auroc_ci_lo", "auroc_ci_hi")):
                err = np.vstack([g[col] - g[lo], g[hi] - g[col]]).clip(min=0)
                ax.barh(y + k * height, g[col], height, xerr=err, label=f"{src}: {wt}", error_kw=dict(lw=0.5))
        axes[0].set_xlabel(rf"mIoU at $\tau$ = {tau:g}")
        axes[1].set_xlabel("AUROC (pixels of the word's region)")
        axes[1].axvline(0.5, color="grey", lw=0.5, ls="--")
        axes[0].set_yticks(y + 0.4 - height / 2, labels)
        axes[0].invert_yaxis()
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside upper center", ncol=len(groups), frameon=False)
    return fig
