"""Every figure the toolkit draws, by name: probe outputs in ``probe_figures``, sweeps in ``sweep_figures``.

Each function takes data (tidy DataFrames of docs/CONTRACTS.md, arrays, images or paths) and returns a matplotlib
``Figure`` in the paper style; ``save_figure(fig, out / "heatmaps")`` writes it (``reports.style``)."""
from __future__ import annotations

from .figure_parts import fit_xticklabels
from .probe_figures import (MAPS_COLUMNS, SKIP_COLUMNS, TIMESTEP_COLUMNS, attention_breakdown, attention_grid,
                            iou_layers, iou_sweep, layer_names, skip_heatmap, temb_cosine, timestep_heatmap,
                            token_attribution)
from .sweep_figures import SUMMARY_COLUMNS, find_metric, metric_bars, sample_grid, tradeoff

__all__ = ["MAPS_COLUMNS", "SKIP_COLUMNS", "SUMMARY_COLUMNS", "TIMESTEP_COLUMNS", "attention_breakdown",
           "attention_grid", "find_metric", "fit_xticklabels", "iou_layers", "iou_sweep", "layer_names",
           "metric_bars", "sample_grid", "skip_heatmap", "temb_cosine", "timestep_heatmap", "token_attribution",
           "tradeoff"]
