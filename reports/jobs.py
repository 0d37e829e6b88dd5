"""Read a sweep's job files (docs/CONTRACTS.md, "Job files") into one tidy results table.

One row per variant × seed; one column per metric; ``status`` is "ok", "failed" (the job wrote its error) or
"missing" (expected but no readable ``result.json``: a crashed or never-run job); then one ``prov_<key>`` column per
top-level provenance field (what moves the numbers: implementation, extractor, weights hash, resize, N, seeds,
sampler, steps, CFG scale, fid_status, primary_metric, ...). Nothing here computes statistics: that is
:mod:`reports.summary`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

RESULT_FILE = "result.json"
# Columns that describe a job rather than measure it; the other columns are metrics, then provenance (prefixed).
ID_COLUMNS = ["sweep", "variant", "seed", "baseline", "protocol", "status", "error", "seconds", "job"]
# Provenance columns are "prov_<key>": the prefix keeps them apart from metric columns, which can share a name
# (ablations write provenance["denoising_loss"], the method, beside metrics["denoising_loss"], the value).
PROVENANCE_PREFIX = "prov_"
# Folders a rebuilt report writes into the sweep directory: never read job files from there.
OUTPUT_DIRS = {"report", "figures"}


class JobsError(ValueError):
    """The job files under a folder do not form one sweep (duplicated jobs, several baselines): a user error that
    ``python -m reports`` prints as ``error: ...`` (exit 2), not a crash."""


@dataclass
class Jobs:
    """Everything the report needs from the job files, already parsed."""
    root: Path
    records: list[dict]                       # parsed result.json (plus "_dir", relative job folder)
    results: pd.DataFrame                     # tidy: ID_COLUMNS + one column per metric + provenance columns
    metrics: list[str]                        # metric columns in first-seen order
    higher_is_better: dict[str, bool]
    job_ci: dict[tuple[str, int, str], tuple[float, float]] = field(default_factory=dict)  # (variant, seed, metric)
    provenance: list[str] = field(default_factory=list)  # "prov_*" columns in first-seen order (never metrics)

    @property
    def baseline(self) -> str | None:
        return baseline_variant(self.results)

    @property
    def incomplete(self) -> pd.DataFrame:
        return self.results[self.results["status"] != "ok"]


def find_result_files(root: Path) -> list[Path]:
    """All ``result.json`` below ``root`` (any depth: Hydra multirun folders nest), skipping report outputs."""
    found = []
    for p in sorted(root.rglob(RESULT_FILE)):
        rel = p.relative_to(root).parts
        if rel and rel[0] in OUTPUT_DIRS:
            continue
        found.append(p)
    return found


def _read_record(path: Path, root: Path) -> dict:
    """Parse one result.json; an unreadable file becomes a failed record (the report must still build)."""
    rel_dir = path.parent.relative_to(root).as_posix()
    try:
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or "variant" not in rec:
            raise ValueError("not a job record (no 'variant')")
    except (OSError, ValueError) as e:
        variant, _, seed = path.parent.name.partition("__seed")
        rec = {"variant": variant, "seed": int(seed) if seed.isdigit() else -1, "status": "failed",
               "error": f"unreadable {RESULT_FILE}: {e}", "_unreadable": True}
    rec["_dir"] = rel_dir
    return rec


def _sweep_dir_of(job_dir: str) -> str:
    """The sweep folder a job folder belongs to: the parent of its ``jobs/`` folder (else its own parent)."""
    d = Path(job_dir)
    return (d.parent.parent if d.parent.name == "jobs" else d.parent).as_posix()


def check_unique_jobs(records: list[dict], root: Path) -> None:
    """Raise :class:`JobsError` when two job files under ``root`` report the same (variant, seed).

    Seeds are the unit of replication: pooling two jobs of one (variant, seed) (e.g. from sibling sweeps of other
    protocols or budgets below a common parent) would count them as extra seeds and pair them wrongly with the
    baseline. Unreadable files (no job record; e.g. a probe run's result.json) are not jobs and are skipped.
    """
    where: dict[tuple[str, int], list[str]] = {}
    for rec in records:
        if rec.get("_unreadable"):
            continue
        where.setdefault((str(rec["variant"]), int(rec.get("seed", -1))), []).append(rec["_dir"])
    dups = {k: v for k, v in where.items() if len(v) > 1}
    if not dups:
        return
    shown = list(dups.items())[:8]
    lines = "; ".join(f"variant {v!r} seed {s} in {', '.join(dirs)}" for (v, s), dirs in shown)
    more = f" (and {len(dups) - len(shown)} more)" if len(dups) > len(shown) else ""
    sweeps = sorted({_sweep_dir_of(d) for dirs in dups.values() for d in dirs})
    hint = ", ".join(str(root / d) for d in sweeps[:6]) + (", ..." if len(sweeps) > 6 else "")
    raise JobsError(f"{root} holds more than one job for the same (variant, seed), which would be pooled as extra "
                    f"seeds (e.g. sibling sweeps of different protocols or budgets): {lines}{more}. Point at one "
                    f"sweep directory instead, e.g. one of: {hint}")


def provenance_value(value):
    """A provenance value as one table cell: scalars as they are, lists as JSON text (e.g. the seeds)."""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def provenance_columns(provenance) -> dict:
    """``{"prov_<key>": cell}`` for every top-level, non-mapping field of a job's provenance.

    Mappings (per-metric implementations, extractor details, versions) stay in result.json and the report's config
    blocks: the fields that move the headline number are top-level already (metrics/score.py lifts them there).
    """
    if not isinstance(provenance, dict):
        return {}
    return {f"{PROVENANCE_PREFIX}{k}": provenance_value(v) for k, v in provenance.items() if not isinstance(v, dict)}


def _one_type(column: pd.Series) -> pd.Series:
    """Text when jobs recorded a field with different types (25 here, "25" there): parquet needs one type."""
    kinds = {"bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else "text"
             for v in column.dropna()}
    return column if len(kinds) <= 1 else column.map(lambda v: v if pd.isna(v) else str(v))


def _job_dirs_without_result(root: Path) -> list[Path]:
    """``jobs/<variant>__seed<k>/`` folders that exist but hold no result.json (the job died before writing)."""
    jobs = root / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(d for d in jobs.iterdir() if d.is_dir() and "__seed" in d.name and not (d / RESULT_FILE).exists())


def baseline_variant(results: pd.DataFrame) -> str | None:
    """The variant the sweep marked ``baseline``; a variant literally named "baseline" if none is marked."""
    marked = results.loc[results["baseline"].fillna(False).astype(bool), "variant"].unique()
    if len(marked) > 1:
        raise JobsError(f"more than one baseline variant: {sorted(marked)}")
    if len(marked) == 1:
        return str(marked[0])
    return "baseline" if "baseline" in set(results["variant"]) else None


EXPECTED_FILE = "expected_jobs.json"


def expected_jobs(root: Path) -> list[tuple[str, int]]:
    """(variant, seed) of every job the sweep planned, from ``expected_jobs.json`` when the sweep wrote one."""
    path = Path(root) / EXPECTED_FILE
    if not path.exists():
        return []
    try:
        return [(str(j["variant"]), int(j["seed"])) for j in json.loads(path.read_text())["jobs"]]
    except (ValueError, KeyError, TypeError):
        return []


def load_jobs(root: str | Path) -> Jobs:
    """Read every job under ``root`` and build the tidy results table, adding rows for missing jobs.

    ``root`` must be one sweep: two job files with the same (variant, seed) raise :class:`JobsError` naming them
    (a parent of several sweep folders would otherwise pool them as extra seeds).

    A job is "missing" when its folder exists without a result, or when its (variant, seed) cell is absent from the
    grid spanned by the variants and seeds seen: sweeps run every variant on the same seeds (paired comparisons),
    so a hole in the grid is a job that did not report.
    """
    root = Path(root)
    records = [_read_record(p, root) for p in find_result_files(root)]
    check_unique_jobs(records, root)
    metrics: list[str] = []
    prov_cols: list[str] = []
    hib: dict[str, bool] = {}
    job_ci: dict[tuple[str, int, str], tuple[float, float]] = {}
    rows = []
    for rec in records:
        row = {
            "sweep": rec.get("sweep"), "variant": str(rec["variant"]), "seed": int(rec.get("seed", -1)),
            "baseline": bool(rec.get("baseline", False)), "protocol": rec.get("protocol"),
            "status": rec.get("status") or "failed", "error": rec.get("error"),
            "seconds": rec.get("seconds"), "job": rec["_dir"],
        }
        for name, value in (rec.get("metrics") or {}).items():
            if name not in metrics:
                metrics.append(name)
            row[name] = np.nan if value is None else float(value)
        for col, value in provenance_columns(rec.get("provenance")).items():
            if col not in prov_cols:
                prov_cols.append(col)
            row[col] = value
        for name, flag in (rec.get("higher_is_better") or {}).items():
            hib.setdefault(name, bool(flag))
        for name, ci in (rec.get("ci") or {}).items():
            if ci is not None and len(ci) == 2 and None not in ci:
                job_ci[(row["variant"], row["seed"], name)] = (float(ci[0]), float(ci[1]))
        rows.append(row)

    seen = {(r["variant"], r["seed"]) for r in rows}
    for d in _job_dirs_without_result(root):
        variant, _, seed = d.name.partition("__seed")
        key = (variant, int(seed) if seed.isdigit() else -1)
        if key not in seen:
            rows.append({"variant": key[0], "seed": key[1], "status": "missing", "job": d.relative_to(root).as_posix(),
                         "error": f"no {RESULT_FILE} in {d.relative_to(root).as_posix()} (job did not finish)"})
            seen.add(key)
    # Jobs the sweep planned (expected_jobs.json, written before any job ran) but that left no folder at all.
    for v, s in expected_jobs(root):
        if (v, s) not in seen:
            rows.append({"variant": v, "seed": s, "status": "missing", "job": None,
                         "error": f"planned job variant {v!r} seed {s} never reported (no job folder)"})
            seen.add((v, s))
    # The baseline row first (tables read top-down from the reference), then the order the jobs were found in.
    variants = sorted(dict.fromkeys(r["variant"] for r in rows),
                      key=lambda v: not any(r.get("baseline") and r["variant"] == v for r in rows))
    seeds = sorted({r["seed"] for r in rows if r["seed"] >= 0})
    sweep = next((r.get("sweep") for r in rows if r.get("sweep")), None)
    for v in variants:
        for s in seeds:
            if (v, s) not in seen:
                rows.append({"variant": v, "seed": s, "status": "missing", "job": None,
                             "error": f"no job for variant {v!r} seed {s} (other variants ran this seed)"})

    results = pd.DataFrame(rows, columns=ID_COLUMNS + metrics + prov_cols)
    for col in prov_cols:
        results[col] = _one_type(results[col])
    if len(results):
        results["sweep"] = results["sweep"].fillna(sweep)
        # A variant's baseline flag and protocol hold for its missing rows too.
        for col in ("baseline", "protocol"):
            known = results.dropna(subset=[col]).groupby("variant")[col].first()
            results[col] = results[col].fillna(results["variant"].map(known))
        results["baseline"] = results["baseline"].fillna(False).astype(bool)
        results["seed"] = results["seed"].astype(int)
        order = {v: i for i, v in enumerate(variants)}
        results = (results.assign(_o=results["variant"].map(order)).sort_values(["_o", "seed"], kind="stable")
                   .drop(columns="_o").reset_index(drop=True))
    # Failed jobs keep NaN metrics: a failure must never look like a measured zero.
    results.loc[results["status"] != "ok", metrics] = np.nan
    return Jobs(root=root, records=records, results=results, metrics=metrics, higher_is_better=hib, job_ci=job_ci,
                provenance=prov_cols)
