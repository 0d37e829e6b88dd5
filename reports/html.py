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
import pandas as pd

from .summary import CI_METHOD, CONFIDENCE, PAIRED_METHOD
from .tables import format_cell, format_delta

# Kept beside this module (not in a sub-folder) so the package-data pattern "*.html" ships it in wheels.
TEMPLATE = "report_template.html"


def rel_href(target: Path, page_dir: Path) -> str:
    """URL of ``target`` relative to the page's folder (posix separators, spaces etc. percent-encoded)."""
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def summary_rows(summary: pd.DataFrame, higher_is_better: dict) -> dict:
    """Header and cells of the HTML summary table (plain-text ± and †)."""
    metrics = list(dict.fromkeys(summary["metric"]))
    headers = [m + ("" if higher_is_better.get(m) is None else (" ↑" if higher_is_better[m] else " ↓"))
               for m in metrics]
    rows = []
    for variant, sub in summary.groupby("variant", sort=False):
        sub = sub.set_index("metric")
        rows.append({"variant": variant, "is_baseline": bool(sub["is_baseline"].iloc[0]),
                     "cells": [{"text": format_cell(sub.loc[m], pm=" ± ", dagger=" †", empty="—"),
                                "best": bool(sub.loc[m, "best"]), "n": int(sub.loc[m, "n"])} for m in metrics]})
    return {"headers": headers, "rows": rows}


def delta_rows(summary: pd.DataFrame) -> list[dict]:
    if summary["baseline"].isna().all():
        return []
    metrics = list(dict.fromkeys(summary["metric"]))
    out = []
    for variant, sub in summary.groupby("variant", sort=False):
        if bool(sub["is_baseline"].iloc[0]):
            continue
        sub = sub.set_index("metric")
        out.append({"variant": variant, "cells": [format_delta(sub.loc[m]) for m in metrics]})
    return out


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


def render(context: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    base = {"built": _dt.datetime.now().isoformat(timespec="seconds"), "confidence": int(CONFIDENCE * 100),
            "ci_method": CI_METHOD, "paired_method": PAIRED_METHOD}
    return env.get_template(TEMPLATE).render(**{**base, **context})
