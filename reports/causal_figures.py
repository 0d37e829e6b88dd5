"""Figures of a causal probe run (``causal.csv``): the site x timestep-bin heatmap of an effect, the per-site effect
over all bins with its 95% CI, and the images of the strongest patches. Each function returns a ``Figure``."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .figure_parts import fit_xticklabels, heatmap_panel, ordered_unique, require_columns, to_image_array
from .style import OKABE_ITO, ONE_COLUMN_IN, TWO_COLUMN_IN, paper_style

CAUSAL_COLUMNS = ("site", "label", "kind", "t_bin", "t_lo", "t_hi", "measure", "value", "ci_lo", "ci_hi", "n")
TITLES = {"attribute_flip": "attribute takes the source's (fraction)",
          "attribute_kept": "attribute kept (fraction)",
          "latent_toward_source": "final latent moved toward the source",
          "latent_change": "relative change of the final latent"}


def _bins(df: pd.DataFrame) -> list:
    """Bin columns in sampling order (high noise first), then "all"."""
    per = df[df["t_bin"].astype(str) != "all"].drop_duplicates("t_bin").sort_values("t_lo", ascending=False)
    return [*per["t_bin"].astype(str), "all"]


def _bin_label(df: pd.DataFrame, b: str) -> str:
    if b == "all":
        return "all"
    r = df[df["t_bin"].astype(str) == b].iloc[0]
    return f"{r.t_lo:.0f}-{r.t_hi:.0f}"


def causal_grid(table: pd.DataFrame, measure: str, *, title: str | None = None):
    """Sites (forward order) x timestep bins (sampling order, then all bins) of `measure`; groups in a second panel."""
    require_columns(table, CAUSAL_COLUMNS, "causal.csv")
    df = table[(table["measure"] == measure) & (table["site"] != "none")].copy()
    if df.empty:
        raise ValueError(f"causal.csv has no rows of measure {measure!r}")
    df["t_bin"] = df["t_bin"].astype(str)
    bins = _bins(df)
    cols = [_bin_label(df, b) for b in bins]
    grouped = df["site"].str.startswith(("kind:", "level:")) | (df["site"] == "all")
    parts = [("sites", df[~grouped]), ("groups", df[grouped])]
    parts = [(n, p) for n, p in parts if not p.empty]
    heights = [p["label"].nunique() for _, p in parts]
    with paper_style():
        fig, axes = plt.subplots(len(parts), 1, figsize=(TWO_COLUMN_IN * 0.62, 0.9 + 0.115 * sum(heights)),
                                 gridspec_kw=dict(height_ratios=heights), squeeze=False, layout="constrained")
        for ax, (name, part) in zip(axes[:, 0], parts):
            labels = ordered_unique(part["label"])
            m = part.pivot_table(index="label", columns="t_bin", values="value", aggfunc="first")
            m = m.reindex(index=labels, columns=bins)
            m.columns = cols
            heatmap_panel(ax, m, title=(title or TITLES.get(measure, measure)) if name == "sites" else "",
                          xlabel="timestep bin (sampling order)" if ax is axes[-1, 0] else "", ylabel="", fig=fig)
            ax.tick_params(axis="y", labelsize=5)
        fit_xticklabels(fig)
    return fig


def every_bin(table: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Rows of `measure` with every bin patched: the single sites, else the groups, else "all"."""
    rows = table[(table["measure"] == measure) & (table["t_bin"].astype(str) == "all")]
    df = rows[~rows["site"].isin(["all", "none"])]
    grouped = df["site"].str.startswith(("kind:", "level:"))
    if (~grouped).any():
        return df[~grouped]
    return df[grouped] if grouped.any() else rows[rows["site"] == "all"]


def causal_bars(table: pd.DataFrame, measure: str, *, title: str | None = None):
    """Per single site (or group), `measure` with every bin patched, mean and 95% CI, coloured by site kind."""
    require_columns(table, CAUSAL_COLUMNS, "causal.csv")
    df = every_bin(table, measure)
    if df.empty:
        raise ValueError(f"causal.csv has no site rows of measure {measure!r}")
    kinds = ordered_unique(df["kind"])
    colour = {k: OKABE_ITO[i % len(OKABE_ITO)] for i, k in enumerate(kinds)}
    y = np.arange(len(df))[::-1]
    with paper_style():
        fig, ax = plt.subplots(figsize=(ONE_COLUMN_IN, 0.7 + 0.1 * len(df)), layout="constrained")
        err = np.vstack([df["value"] - df["ci_lo"], df["ci_hi"] - df["value"]]).clip(min=0)
        ax.barh(y, df["value"], xerr=np.nan_to_num(err), color=[colour[k] for k in df["kind"]], height=0.75,
                error_kw=dict(lw=0.5, capsize=0))
        ax.set_yticks(y, df["label"], fontsize=5)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel(title or TITLES.get(measure, measure))
        ax.set_title("every timestep bin patched", fontsize=7)
        handles = [plt.Rectangle((0, 0), 1, 1, color=colour[k]) for k in kinds]
        ax.legend(handles, kinds, fontsize=5, loc="lower right", frameon=False)
    return fig


def patch_images(images: Sequence, titles: Sequence[str], *, ncols: int = 4):
    """The source, the target and the strongest patches' images, each titled."""
    n = len(images)
    rows = -(-n // ncols)
    panel = TWO_COLUMN_IN / ncols
    with paper_style():
        fig, axes = plt.subplots(rows, ncols, figsize=(TWO_COLUMN_IN, rows * (panel + 0.3)), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, im, t in zip(axes.flat, images, titles):
            ax.imshow(to_image_array(im))
            ax.set_title(t, fontsize=6)
    return fig
