"""Every figure the probes write, in one place, drawn by `reports.figures` in the shared paper style.

The three contract figures (attention grid, timestep heatmap, skip heatmap) come straight from
`reports.figures`; the few panels it has no function for (time-embedding cosine matrix, token
attribution bars, IoU-vs-tau curves, per-layer mIoU/AUROC bars) are drawn here with
`reports.style.paper_style`, so swapping any of them for a reports function later touches only this file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports import figures as rf  # noqa: E402
from reports.style import ONE_COLUMN_IN, TWO_COLUMN_IN, paper_style, save_figure  # noqa: E402


def attention(image: np.ndarray, heatmaps: dict[str, np.ndarray], stem: Path, title: str | None = None):
    return save_figure(rf.attention_grid(image, heatmaps, title=title), stem)


def attention_breakdown(maps: pd.DataFrame, stem: Path):
    return save_figure(rf.attention_breakdown(maps), stem)


def timestep(table: pd.DataFrame, stem: Path):
    return save_figure(rf.timestep_heatmap(table), stem)


def skips(table: pd.DataFrame, stem: Path):
    return save_figure(rf.skip_heatmap(table), stem)


def cosine(matrix: np.ndarray, timesteps: list[int], stem: Path):
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, ONE_COLUMN_IN * 0.85))
        im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ticks = range(len(timesteps))
        ax.set_xticks(ticks, [str(t) for t in timesteps], rotation=90)
        ax.set_yticks(ticks, [str(t) for t in timesteps])
        ax.set_xlabel("timestep")
        ax.set_ylabel("timestep")
        ax.set_title("time-embedding cosine similarity")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, stem)


def attribution(image: np.ndarray, heatmaps: dict[str, np.ndarray], tokens: pd.DataFrame, stem: Path):
    """Attention overlays (words + the skip attribution map) beside token attribution bars."""
    paths = save_figure(rf.attention_grid(image, heatmaps, title="attention and skip attribution"),
                        stem.with_name(stem.name + "_maps"))
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, ONE_COLUMN_IN * 0.7))
        labels = [f"{w}" for w in tokens["word"]]
        vals = tokens["attribution"].to_numpy()
        ax.bar(range(len(vals)), vals, color=["#0072B2" if v >= 0 else "#D55E00" for v in vals])
        ax.set_xticks(range(len(vals)), labels, rotation=60)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("integrated gradients")
        ax.set_title("token attribution of the noise prediction")
    return paths + save_figure(fig, stem)


def iou_sweep(summary: pd.DataFrame, stem: Path):
    """mIoU (95% CI) against tau, one line per (source, word type), all layers and steps."""
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
    return save_figure(fig, stem)


def iou_layers(summary: pd.DataFrame, stem: Path, tau: float = 0.4):
    """Per layer, one row each: mIoU at `tau` and AUROC (95% CI) of every source's shape and colour words, beside
    DAAM's aggregate ("all"). AUROC < 0.5 marks a layer whose word maps point away from the object."""
    s = summary[(summary["tau"] == tau) & summary["word_type"].isin(["colour", "shape"])
                & (summary["breakdown"].str.startswith("layer=") | (summary["breakdown"] == "all"))]
    order = ["all"] + [b for b in dict.fromkeys(s["breakdown"]) if b != "all"]
    labels = [b.removeprefix("layer=").replace(".transformer_blocks.0.attn2", "") for b in order]
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
    return save_figure(fig, stem)


__all__ = ["attention", "attention_breakdown", "timestep", "skips", "cosine", "attribution", "iou_sweep",
           "iou_layers", "TWO_COLUMN_IN"]
