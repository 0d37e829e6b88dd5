"""Every figure a probe run writes, drawn by `reports.figures` and saved as `<stem>.pdf` + `<stem>.png`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports import figures as report_figures  # noqa: E402
from reports.style import save_figure  # noqa: E402


def attention(image: np.ndarray, heatmaps: dict[str, np.ndarray], stem: Path, title: str | None = None):
    return save_figure(report_figures.attention_grid(image, heatmaps, title=title), stem)


def attention_breakdown(maps: pd.DataFrame, stem: Path):
    return save_figure(report_figures.attention_breakdown(maps), stem)


def timestep(table: pd.DataFrame, stem: Path):
    return save_figure(report_figures.timestep_heatmap(table), stem)


def skips(table: pd.DataFrame, stem: Path):
    return save_figure(report_figures.skip_heatmap(table), stem)


def cosine(matrix: np.ndarray, timesteps: list[int], stem: Path):
    return save_figure(report_figures.temb_cosine(matrix, timesteps), stem)


def attribution(image: np.ndarray, heatmaps: dict[str, np.ndarray], tokens: pd.DataFrame, stem: Path):
    """Attention overlays (words + the skip attribution map) in `<stem>_maps`, token attribution bars in `<stem>`."""
    paths = save_figure(report_figures.attention_grid(image, heatmaps, title="attention and skip attribution"),
                        stem.with_name(stem.name + "_maps"))
    return paths + save_figure(report_figures.token_attribution(tokens), stem)


def iou_sweep(summary: pd.DataFrame, stem: Path):
    return save_figure(report_figures.iou_sweep(summary), stem)


def iou_layers(summary: pd.DataFrame, stem: Path, tau: float = 0.4):
    return save_figure(report_figures.iou_layers(summary, tau=tau), stem)


__all__ = ["attention", "attention_breakdown", "timestep", "skips", "cosine", "attribution", "iou_sweep",
           "iou_layers"]
