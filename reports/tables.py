"""The LaTeX results table (pandas ``Styler.to_latex`` with booktabs rules).

Rows are variants, columns metrics with ↑/↓ from ``higher_is_better``: the sweep's primary metrics in
``table.tex`` (:func:`choose_primary`), every compared metric in ``table_full.tex``. Each cell is ``mean ± CI
half-width`` (the CI of :mod:`reports.summary`; marked b when it is the jobs' bootstrap over images) with ``(n=k)``
when the variant has fewer seeds than the metric's full count; the best variant per metric (decided on the seeds
every variant completed, see :mod:`reports.summary`) is bold and a dagger marks deltas whose paired CI vs the
baseline excludes 0. The caption names what moves the numbers: N, seeds, protocol, sampler, CI method, the
real-vs-real floor, and how "best" is decided.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .summary import CI_METHOD, CONFIDENCE, JOB_CI_METHODS, PAIRED_METHOD

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIALS))
DAGGER = r"$^\dagger$"
# Main table width when a sweep names no primary metrics: as many columns as fit a page (and a 1280-px window).
DEFAULT_PRIMARY = 5
# The one mark of a CI taken from the jobs' bootstrap over images (the t-interval over seeds is unmarked).
BOOTSTRAP_MARK = "b"
BOOTSTRAP_NOTE = ("CI from the jobs' bootstrap over images where the seeds give none (one seed, or the same "
                  "value on every seed: a t-interval would be ± 0); for a Δ, the variant's and the baseline's in "
                  "quadrature")


def choose_primary(metrics: Sequence[str], configured: Sequence[str] | None = None,
                   n_default: int = DEFAULT_PRIMARY) -> list[str]:
    """The main table's metrics: the sweep's ``primary_metrics`` that it measured (in the config's order; a config
    lists names of several metric sets, e.g. fid and fd_evaluator), else the first ``n_default`` of ``metrics``."""
    chosen = [m for m in dict.fromkeys(configured or ()) if m in metrics]
    return chosen or list(metrics)[:n_default]


def ci_mark(method) -> str:
    """:data:`BOOTSTRAP_MARK` for a CI from the jobs' bootstrap (see :mod:`reports.summary`), else ""."""
    return BOOTSTRAP_MARK if method in JOB_CI_METHODS else ""


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


def format_cell(row, *, pm: str = r" $\pm$ ", dagger: str = DAGGER, empty: str = "--",
                mark: str | None = r"\textsuperscript{{{}}}") -> str:
    """``mean ± half-width`` of one summary row, with ``mark`` (a format string; None: left to the caller) around
    :func:`ci_mark` when the CI is the jobs' bootstrap, ``dagger`` when its delta CI excludes 0 (LaTeX by default;
    the HTML report passes plain-text symbols) and `` (n=k)`` when the row has fewer seeds than the metric's
    full seed count (``full_n``): its mean is over fewer seeds than its neighbours'."""
    if row["n"] == 0 or not np.isfinite(row["mean"]):
        return empty
    half = (row["ci_hi"] - row["ci_lo"]) / 2 if np.isfinite(row["ci_lo"]) else math.nan
    d = decimals_for(half, row["mean"])
    text = f"{row['mean']:.{d}f}" + (f"{pm}{half:.{d}f}" if np.isfinite(half) else "")
    if mark and np.isfinite(half) and ci_mark(row["ci_method"]):
        text += mark.format(ci_mark(row["ci_method"]))
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
    text += " †" if bool(row["delta_excludes_zero"]) else ""
    full_n = row.get("full_n")
    short = full_n is not None and not pd.isna(full_n) and int(row["delta_n"]) < int(full_n)
    return text + (f" (n={int(row['delta_n'])})" if short else "")


def metric_header(metric: str, higher_is_better: bool | None) -> str:
    arrow = "" if higher_is_better is None else (r" $\uparrow$" if higher_is_better else r" $\downarrow$")
    return latex_escape(metric) + arrow


def _join(values: Iterable) -> str:
    vals = [v for v in dict.fromkeys(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return ", ".join(str(v) for v in vals) if vals else "not recorded"


def caption(*, sweep: str | None, n_images: Sequence, seeds: Sequence[int], protocols: Sequence,
            baseline: str | None, provenance: Mapping[str, Sequence] | None = None, n_incomplete: int = 0,
            n_jobs: int = 0, other_ci_methods: Sequence[str] = (), floors: Mapping[str, tuple] | None = None,
            best_seeds: Mapping[str, tuple[int, int]] | None = None, bootstrap_marked: bool = False) -> str:
    """The caption (LaTeX), naming N, seeds, protocol, sampler, the CI method and how "best" is decided.

    ``floors``: metric → (value, lo, hi) of its real-vs-real floor (see :func:`floor_text`). ``best_seeds``:
    metric → (seeds "best" was decided on, the metric's full seed count), for the metrics where the first is
    smaller (see :func:`best_seeds`); they are named in the caption. ``bootstrap_marked``: some cell carries
    :data:`BOOTSTRAP_MARK`, explained in the caption.
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
    other = [m for m in other_ci_methods if m not in JOB_CI_METHODS]
    if other:
        parts.append("Rows with fewer seeds: " + latex_escape("; ".join(other)) + ".")
    if bootstrap_marked:
        note = latex_escape(BOOTSTRAP_NOTE).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
        parts.append(f"\\textsuperscript{{{BOOTSTRAP_MARK}}}: {note}.")
    if floors:
        # the floor is a property of the reference data at this N, not of a variant: one number, in the caption
        with_ci = any(np.isfinite(lo) for _, lo, _ in floors.values())
        parts.append("Real-vs-real floor at the same N: " + latex_escape(floor_text(floors))
                     + (f" ([lo, hi]: the jobs' {int(CONFIDENCE * 100)}\\% CI of the floor)." if with_ci else "."))
    parts.append(r"Bold: best mean over the seeds every variant with a result completed (paired, as the deltas; "
                 r"ties all bold), so it can differ from the best mean shown; (n=k): mean over only k seeds; "
                 r"$\uparrow$/$\downarrow$: higher/lower is better.")
    if best_seeds:
        parts.append("Best decided on fewer shared seeds for " + ", ".join(
            f"{latex_escape(m)} ({k} of {full}{'; none bold' if k == 0 else ''})"
            for m, (k, full) in best_seeds.items()) + ".")
    if baseline is not None:
        via = (f" (where marked \\textsuperscript{{{BOOTSTRAP_MARK}}}, the job CIs in quadrature)" if bootstrap_marked
               else "")
        parts.append(f"{DAGGER}: the {PAIRED_METHOD.replace('−', '-')}{via} vs \\texttt{{{latex_escape(baseline)}}} "
                     f"excludes 0.")
    if n_incomplete:
        parts.append(f"Incomplete sweep: {n_incomplete} of {n_jobs} jobs failed or missing (--: no result).")
    return " ".join(parts)


def floor_text(floors: Mapping[str, tuple]) -> str:
    """``fd 228 [195, 262], kid 0.43`` from metric → (value, lo, hi): 3 significant digits, the CI when known."""
    out = []
    for k, (v, lo, hi) in floors.items():
        ci = f" [{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        out.append(f"{k} {v:.3g}{ci}")
    return ", ".join(out)


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
