"""Reports: tidy tables, paper-ready figures and an HTML page for sweeps and probe runs.

- ``reports.style``: the one paper style (``paper_style``, ``figsize``, ``save_figure``).
- ``reports.figures``: figure functions over tidy tables/arrays (attention, timestep, skips, metrics, samples).
"""
from .style import DPI, ONE_COLUMN_IN, TWO_COLUMN_IN, figsize, paper_style, save_figure
from .figures import (attention_breakdown, attention_grid, metric_bars, sample_grid, skip_heatmap,
                      timestep_heatmap, tradeoff)

__all__ = ["DPI", "ONE_COLUMN_IN", "TWO_COLUMN_IN", "figsize", "paper_style", "save_figure", "attention_breakdown",
           "attention_grid", "metric_bars", "sample_grid", "skip_heatmap", "timestep_heatmap", "tradeoff"]
