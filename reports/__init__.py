"""Reports: tidy tables, paper-ready figures and an HTML page for sweeps and probe runs.

- ``reports.style``: the one paper style (``paper_style``, ``figsize``, ``save_figure``).
- ``reports.figures``: every figure function over tidy tables/arrays, drawn in ``probe_figures`` (attention,
  timestep, skips, attributions, IoU) and ``sweep_figures`` (metrics, trade-off, samples).
- ``reports.build_report(sweep_dir)``: job files → results.csv/.parquet, summary.csv, table.tex, figures,
  report/index.html (also ``python -m reports DIR``). Pieces: ``jobs`` (reading), ``summary`` (statistics),
  ``tables`` (LaTeX), ``html`` + ``environment`` (the page).
- ``reports.explorer``: the self-contained explorer page of a probe run (``explorer.html``);
  ``reports.causal_figures``: the causal probe's site x timestep and per-site figures.
"""
from .style import DPI, ONE_COLUMN_IN, TWO_COLUMN_IN, figsize, paper_style, save_figure
from .figures import (attention_breakdown, attention_grid, metric_bars, sample_grid, skip_heatmap,
                      timestep_heatmap, tradeoff)
from .build import build_report
from .jobs import JobsError, load_jobs
from .summary import summarize, t_interval

__all__ = ["DPI", "ONE_COLUMN_IN", "TWO_COLUMN_IN", "figsize", "paper_style", "save_figure", "attention_breakdown",
           "attention_grid", "metric_bars", "sample_grid", "skip_heatmap", "timestep_heatmap", "tradeoff",
           "build_report", "JobsError", "load_jobs", "summarize", "t_interval"]
