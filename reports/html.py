"""The browsable ``report/index.html``: summary, figures, sample grids, jobs, configs, environment.

The page is rendered from ``report_template.html`` with jinja2 (autoescaped: variant names and error messages
are data, not markup). Every link is relative to the page, so the sweep folder can be copied or zipped and still
browses offline; nothing is fetched from the network.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd

from .explorer import PAGE as EXPLORER_PAGE
from .summary import CI_METHOD, CONFIDENCE, PAIRED_METHOD
from .tables import BOOTSTRAP_MARK, BOOTSTRAP_NOTE, DEFAULT_PRIMARY, ci_mark, format_cell, format_delta

# Kept beside this module (not in a sub-folder) so the package-data pattern "*.html" ships it in wheels.
TEMPLATE = "report_template.html"


def rel_href(target: Path, page_dir: Path) -> str:
    """URL of ``target`` relative to the page's folder (posix separators, spaces etc. percent-encoded)."""
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _metric_header(metric: str, higher_is_better: dict) -> str:
    hib = higher_is_better.get(metric)
    return metric + ("" if hib is None else (" ↑" if hib else " ↓"))


def _cell(row, text: str, method_col: str, n_text: str) -> dict:
    """One table cell: its text, the bootstrap mark and a title naming n and the CI method when a CI is shown."""
    lo = row["delta_ci_lo" if method_col.startswith("delta") else "ci_lo"]
    shown = text != "—" and bool(np.isfinite(lo))                      # a CI is shown: say which one
    return {"text": text, "mark": ci_mark(row[method_col]) if shown else "",
            "title": f"{n_text}; CI: {row[method_col]}" if shown else n_text}


def summary_rows(summary: pd.DataFrame, higher_is_better: dict, metrics: Sequence[str] | None = None) -> dict:
    """Header and cells of an HTML summary table over ``metrics`` (default: all; plain-text ± and †). A cell's
    ``mark`` flags a CI from the jobs' bootstrap, its ``title`` names n and the CI method."""
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    rows = []
    for variant, sub in summary.groupby("variant", sort=False):
        sub = sub.set_index("metric")
        cells = [_cell(r, format_cell(r, pm=" ± ", dagger=" †", empty="—", mark=None), "ci_method",
                       f"n = {int(r['n'])}") | {"best": bool(r["best"]), "n": int(r["n"])}
                 for r in (sub.loc[m] for m in metrics)]
        rows.append({"variant": variant, "is_baseline": bool(sub["is_baseline"].iloc[0]), "cells": cells})
    return {"headers": [_metric_header(m, higher_is_better) for m in metrics], "rows": rows}


def delta_rows(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> list[dict]:
    """Cells of the HTML table of paired differences to the baseline over ``metrics`` (default: all)."""
    if summary["baseline"].isna().all():
        return []
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(summary["metric"]))
    out = []
    for variant, sub in summary.groupby("variant", sort=False):
        if bool(sub["is_baseline"].iloc[0]):
            continue
        sub = sub.set_index("metric")
        # a narrow window may break a cell between the delta and its CI, never inside the CI or before its †
        cells = [_cell(sub.loc[m], format_delta(sub.loc[m]).replace(", ", ",\u00a0").replace(" †", "\u00a0†"),
                       "delta_ci_method",
                       f"n = {int(sub.loc[m, 'delta_n'])} paired seeds") for m in metrics]
        out.append({"variant": variant, "cells": cells})
    return out


def chunks(items: Sequence, size: int = DEFAULT_PRIMARY) -> list[list]:
    """``items`` in as few runs of at most ``size`` as possible, of nearly equal length (6 → 3 + 3, not 5 + 1):
    a wide table becomes several that each fit the page."""
    n = math.ceil(len(items) / size)
    return [list(part) for part in np.array_split(np.asarray(items, dtype=object), n)] if n else []


def summary_caption(*, n_seeds: int, seeds: Sequence[int], protocols: Sequence, n_images: Sequence,
                    baseline: str | None, primary: bool, marked: bool) -> str:
    """The summary table's caption in two sentences: what the cells are, then how to read bold and †."""
    what = "the sweep's primary metrics" if primary else "the metrics"
    first = (f"Mean ± half-width of the {int(CONFIDENCE * 100)}% CI of {what} over {n_seeds} seed"
             f"{'s' if n_seeds != 1 else ''} ({', '.join(map(str, seeds)) or 'none'}) per variant, protocol "
             f"{', '.join(map(str, protocols)) or 'not recorded'}, N = {', '.join(map(str, n_images)) or '?'} "
             f"images per job; CI: {CI_METHOD}" + (f", {BOOTSTRAP_MARK}: the jobs' bootstrap over images" if marked
                                                   else "") + ".")
    second = "Bold: best on the seeds every variant completed (↑ higher / ↓ lower is better)"
    if baseline is not None:
        second += f"; †: the paired CI of the difference to {baseline} excludes 0"
    return first + " " + second + "."


def _seconds(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"


def job_rows(results: pd.DataFrame, root: Path, page_dir: Path) -> list[dict]:
    """One row per job with links to every file its folder holds."""
    out = []
    for r in results.itertuples(index=False):
        job_dir = root / r.job if isinstance(r.job, str) else None
        files = []
        if job_dir is not None and job_dir.is_dir():
            files = [(p.name, rel_href(p, page_dir)) for p in sorted(job_dir.iterdir()) if p.is_file()]
        out.append({"job": r.job if job_dir is not None else None, "href": rel_href(job_dir, page_dir) + "/" if job_dir is not None else None,
                    "variant": r.variant, "seed": r.seed, "protocol": r.protocol, "status": r.status,
                    "seconds": _seconds(r.seconds), "files": files})
    return out


def config_blocks(records: Sequence[dict], root: Path) -> list[dict]:
    blocks = []
    for rec in records:
        cfg = root / rec["_dir"] / "config.yaml"
        blocks.append({"job": rec["_dir"],
                       "ablation": json.dumps(rec["ablation"], indent=2, sort_keys=True) if rec.get("ablation") else "",
                       "provenance": json.dumps(rec["provenance"], indent=2, sort_keys=True)
                       if rec.get("provenance") else "",
                       "config": cfg.read_text(errors="replace") if cfg.is_file() else ""})
    return blocks


def probe_runs(root: Path, page_dir: Path) -> list[dict]:
    """The probe runs under the sweep folder that have an explorer page (`reports.explorer`), as links."""
    return [{"name": p.parent.relative_to(root).as_posix(), "href": rel_href(p, page_dir)}
            for p in sorted(Path(root).rglob(EXPLORER_PAGE))]


def render(context: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    base = {"built": _dt.datetime.now().isoformat(timespec="seconds"), "confidence": int(CONFIDENCE * 100),
            "ci_method": CI_METHOD, "paired_method": PAIRED_METHOD, "bootstrap_mark": BOOTSTRAP_MARK,
            "bootstrap_note": BOOTSTRAP_NOTE, "probe_runs": []}
    return env.get_template(TEMPLATE).render(**{**base, **context})
