"""The LaTeX results table (pandas ``Styler.to_latex`` with booktabs rules).

Rows are variants, columns metrics with ↑/↓ from ``higher_is_better``; each cell is ``mean ± CI half-width``
(the CI of :mod:`reports.summary`) with ``(n=k)`` when the variant has fewer seeds than the metric's full count,
the best variant per metric (decided on the seeds every variant completed, see :mod:`reports.summary`) is bold
and a dagger marks deltas whose paired CI vs the baseline excludes 0. The caption names what moves the numbers:
N, seeds, protocol, sampler, CI method, and how "best" is decided.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .summary import CI_METHOD, CONFIDENCE, PAIRED_METHOD

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIALS))
DAGGER = r"$^\dagger$"


def latex_escape(text) -> str:
    """Escape LaTeX specials in free text (variant names, metric names, caption values)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group()], str(text))


def decimals_for(half_width: float, mean: float) -> int:
    """Decimals showing two significant digits of the CI half-width (or 3 of the mean when there is no CI).

    Printing more digits than the uncertainty supports is the commonest table error; fewer hides real effects.
    """
    ref, sig = (half_width, 2) if np.isfinite(half_width) and half_width > 0 else (abs(mean), 3)
    if not np.isfinite(ref) or ref == 0:
        return 2
    return int(min(4, max(0, sig - 1 - math.floor(math.log10(ref)))))


def format_cell(row, *, pm: str = r" $\pm$ ", dagger: str = DAGGER, empty: str = "--") -> str:
    """``mean ± half-width`` of one summary row, with ``dagger`` when its delta CI excludes 0 (LaTeX by default;
    the HTML report passes plain-text symbols) and `` (n=k)`` when the row has fewer seeds than the metric's
    full seed count (``full_n``): its mean is over fewer seeds than its neighbours'."""
    if row["n"] == 0 or not np.isfinite(row["mean"]):
        return empty
    half = (row["ci_hi"] - row["ci_lo"]) / 2 if np.isfinite(row["ci_lo"]) else math.nan
    d = decimals_for(half, row["mean"])
    text = f"{row['mean']:.{d}f}" + (f"{pm}{half:.{d}f}" if np.isfinite(half) else "")
    if bool(row["delta_excludes_zero"]):
        text += dagger
    full_n = row.get("full_n")
    if full_n is not None and not pd.isna(full_n) and int(row["n"]) < int(full_n):
        text += f" (n={int(row['n'])})"
    return text


def format_delta(row, *, empty: str = "—") -> str:
    """``Δ [lo, hi]`` of the paired difference to the baseline (plain text, for the HTML report)."""
    if row["is_baseline"] or not np.isfinite(row["delta"]):
        return empty
    half = (row["delta_ci_hi"] - row["delta_ci_lo"]) / 2 if np.isfinite(row["delta_ci_lo"]) else math.nan
    d = decimals_for(half, row["delta"])
    text = f"{row['delta']:+.{d}f}"
    if np.isfinite(half):
        text += f" [{row['delta_ci_lo']:+.{d}f}, {row['delta_ci_hi']:+.{d}f}]"
    return text + (" †" if bool(row["delta_excludes_zero"]) else "") + f" (n={int(row['delta_n'])})"


def metric_header(metric: str, higher_is_better: bool | None) -> str:
    arrow = "" if higher_is_better is None else (r" $\uparrow$" if higher_is_better else r" $\downarrow$")
    return latex_escape(metric) + arrow


def _join(values: Iterable) -> str:
    vals = [v for v in dict.fromkeys(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return ", ".join(str(v) for v in vals) if vals else "not recorded"


def caption(*, sweep: str | None, n_images: Sequence, seeds: Sequence[int], protocols: Sequence,
            baseline: str | None, provenance: Mapping[str, Sequence] | None = None, n_incomplete: int = 0,
            n_jobs: int = 0, other_ci_methods: Sequence[str] = (), floors: Mapping[str, float] | None = None,
            best_seeds: Mapping[str, tuple[int, int]] | None = None) -> str:
    """The caption (LaTeX), naming N, seeds, protocol, sampler, the CI method and how "best" is decided.

    ``best_seeds``: metric → (seeds "best" was decided on, the metric's full seed count), for the metrics where
    the first is smaller (see :func:`best_seeds`); they are named in the caption.
    """
    prov = provenance or {}
    parts = [f"Sweep \\texttt{{{latex_escape(sweep or 'unnamed')}}}: mean $\\pm$ half-width of the "
             f"{int(CONFIDENCE * 100)}\\% CI ({CI_METHOD}) over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
             f"({latex_escape(_join(seeds))}).",
             f"N = {latex_escape(_join(n_images))} images per job; protocol: {latex_escape(_join(protocols))}."]
    sampling = [f"{k.replace('_', ' ')} {latex_escape(_join(prov[k]))}" for k in ("sampler", "sample_steps", "guidance_scale")
                if k in prov and _join(prov[k]) != "not recorded"]
    if sampling:
        parts.append("Sampling: " + ", ".join(sampling) + ".")
    if other_ci_methods:
        parts.append("Rows with fewer seeds: " + latex_escape("; ".join(other_ci_methods)) + ".")
    if floors:
        # the floor is a property of the reference data at this N, not of a variant: one number, in the caption
        parts.append("Real-vs-real floor at the same N: " + ", ".join(
            f"{latex_escape(k)} {v:.3g}" for k, v in floors.items()) + ".")
    parts.append(r"Bold: best mean over the seeds every variant with a result completed (paired, as the deltas; "
                 r"ties all bold), so it can differ from the best mean shown; (n=k): mean over only k seeds; "
                 r"$\uparrow$/$\downarrow$: higher/lower is better.")
    if best_seeds:
        parts.append("Best decided on fewer shared seeds for " + ", ".join(
            f"{latex_escape(m)} ({k} of {full}{'; none bold' if k == 0 else ''})"
            for m, (k, full) in best_seeds.items()) + ".")
    if baseline is not None:
        parts.append(f"{DAGGER}: the {PAIRED_METHOD.replace('−', '-')} vs \\texttt{{{latex_escape(baseline)}}} "
                     f"excludes 0.")
    if n_incomplete:
        parts.append(f"Incomplete sweep: {n_incomplete} of {n_jobs} jobs failed or missing (--: no result).")
    return " ".join(parts)


def best_seeds(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """metric → (``best_n``, ``full_n``) for metrics whose best was decided on fewer seeds than the metric has."""
    out = {}
    for m, sub in summary.groupby("metric", sort=False):
        if metrics is not None and m not in metrics:
            continue
        k, full = int(sub["best_n"].iloc[0]), int(sub["full_n"].iloc[0])
        # one variant alone or no direction: nothing was compared
        if k < full and (sub["n"] > 0).sum() > 1 and not pd.isna(sub["higher_is_better"].iloc[0]):
            out[m] = (k, full)
    return out


def latex_table(summary: pd.DataFrame, *, caption_text: str, label: str = "tab:results",
                metrics: Sequence[str] | None = None) -> str:
    """``table.tex`` content from the tidy summary: booktabs, bold best (paired, see :mod:`reports.summary`),
    mean ± CI with ``(n=k)`` for rows short of seeds, ↑/↓ headers."""
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    variants = list(dict.fromkeys(summary["variant"]))
    cells = summary.assign(cell=summary.apply(format_cell, axis=1))
    wide = cells.pivot(index="variant", columns="metric", values="cell").reindex(index=variants, columns=metrics)
    bold = cells.pivot(index="variant", columns="metric", values="best").reindex(index=variants, columns=metrics)
    hib = summary.groupby("metric")["higher_is_better"].first()
    headers = [metric_header(m, None if pd.isna(hib.get(m)) else bool(hib.get(m))) for m in metrics]
    baseline = summary.loc[summary["is_baseline"].astype(bool), "variant"]
    # Mark the baseline row unless its name already says so.
    index = [latex_escape(v) + (" (baseline)" if len(baseline) and v == baseline.iloc[0] and "baseline" not in v
                                else "") for v in variants]
    wide.index, wide.columns = index, headers
    bold.index, bold.columns = index, headers
    # A columns name (not an index name) lands in the header's first cell instead of adding a second header row.
    wide.columns.name = "Variant"
    styler = wide.style.apply(
        lambda _: np.where(bold.fillna(False).astype(bool).to_numpy(), "font-weight: bold;", ""), axis=None)
    # Cells are already LaTeX (built above with escaped names); escaping again would break $\pm$.
    return styler.to_latex(hrules=True, column_format="l" + "r" * len(metrics), caption=caption_text, label=label,
                           position="t", position_float="centering", convert_css=True)
