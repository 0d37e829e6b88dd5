"""Per variant × metric statistics over seeds: mean, 95% CI, paired delta vs the baseline.

Method (stated in every table caption and the HTML report, see :data:`CI_METHOD`):
- CI of a mean: Student-t interval over seeds, ``mean ± t_{1-α/2, n-1} · s / √n`` with ``s`` the sample standard
  deviation (ddof=1). Seeds are the unit of replication: each job's metric is one draw.
- Delta vs baseline: the difference is taken per seed (variants share seeds, so the comparison is paired) and the
  same t-interval is applied to the per-seed differences; pairing removes the seed-to-seed variance both variants
  share, which is usually most of it.
- Where the seeds give no interval, the jobs' own CIs (the bootstrap over images each job writes in
  ``result.json``) are used and ``ci_method`` says so: with a single seed, and where every seed gave the same value
  (e.g. the denoising loss under protocol=inference: fixed held-out latents, t and noise), whose t-interval would
  have zero width and claim no uncertainty. A delta whose per-seed differences are all equal (or from one seed)
  gets the variant's and the baseline's job CI half-widths combined in quadrature (``delta_ci_method``): it ignores
  the pairing, which only makes it wider.
- Best per metric (``best``): decided like the deltas, on paired seeds: the mean over the seeds *every* compared
  variant (one with at least one value) completed, ``best_n`` of them; ties are all best, and with no seed shared
  by all compared variants nothing is best. Plain means over whatever seeds each variant completed would let a
  variant that failed its hard seed win while worse than the baseline on every seed they share. ``full_n`` is the
  metric's full seed count (seeds on which any variant reported it): a row with ``n < full_n`` lost seeds.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from foundation.stats import t_interval

CONFIDENCE = 0.95
CI_METHOD = "t-interval over seeds"
PAIRED_METHOD = "paired t-interval over seeds (variant − baseline)"
# The jobs' own CIs (metrics/score.py, ablations/job.py: percentile bootstrap over the generated images or the
# held-out latents), used where the seeds give no interval.
SINGLE_SEED_METHOD = "bootstrap over images (the job's CI; one seed)"
SEED_INVARIANT_METHOD = "bootstrap over images (the jobs' CI; equal on every seed, a t-interval would be ± 0)"
QUADRATURE_METHOD = "bootstrap over images (variant's and baseline's job CIs in quadrature, unpaired)"
JOB_CI_METHODS = (SINGLE_SEED_METHOD, SEED_INVARIANT_METHOD, QUADRATURE_METHOD)
SUMMARY_COLUMNS = ["variant", "metric", "higher_is_better", "n", "mean", "sd", "ci_lo", "ci_hi", "ci_method",
                   "is_baseline", "baseline", "delta", "delta_n", "delta_ci_lo", "delta_ci_hi", "delta_ci_method",
                   "delta_excludes_zero", "best", "best_n", "full_n"]


def _ok_values(results: pd.DataFrame, variant: str, metric: str) -> pd.Series:
    """Seed → value for the variant's successful jobs with a finite value."""
    rows = results[(results["variant"] == variant) & (results["status"] == "ok")]
    s = rows.set_index("seed")[metric].astype(float)
    return s[np.isfinite(s)]


def _check_unique_jobs(results: pd.DataFrame) -> None:
    """Seeds are the unit of replication: two successful jobs for one (variant, seed) would be pooled as two draws."""
    ok = results[results["status"] == "ok"]
    dup = ok[ok.duplicated(["variant", "seed"], keep=False)]
    if len(dup):
        pairs = sorted({(str(v), int(s)) for v, s in zip(dup["variant"], dup["seed"])})
        raise ValueError(f"more than one successful job for (variant, seed) {pairs}: each variant must have one "
                         f"job per seed (were several sweeps mixed?)")


def _job_cis(job_ci: Mapping[tuple, tuple[float, float]], variant: str, seeds, metric: str) -> list | None:
    """The jobs' own (lo, hi) for every one of ``seeds``, or None when any job wrote none."""
    cis = [job_ci.get((variant, int(s), metric)) for s in seeds]
    return None if not cis or any(c is None for c in cis) else cis


def _no_spread(values: np.ndarray) -> bool:
    return len(values) >= 2 and float(np.ptp(values)) == 0.0


def mean_ci(vals: pd.Series, cis: list | None, confidence: float) -> tuple[float, float, float, str]:
    """(mean, lo, hi, method) of one variant's seed values; the jobs' CIs where the seeds give no interval."""
    mean, lo, hi = t_interval(vals.to_numpy(), confidence)
    if len(vals) == 0:
        return mean, lo, hi, "none (no successful job)"
    if (len(vals) == 1 or _no_spread(vals.to_numpy())) and cis is not None:
        lo, hi = (float(np.mean([c[k] for c in cis])) for k in (0, 1))
        return mean, lo, hi, SINGLE_SEED_METHOD if len(vals) == 1 else SEED_INVARIANT_METHOD
    return mean, lo, hi, CI_METHOD if len(vals) >= 2 else "none (fewer than 2 seeds)"


def delta_ci(diffs: np.ndarray, var_cis: list | None, base_cis: list | None,
             confidence: float) -> tuple[float, float, float, str]:
    """(delta, lo, hi, method) of the per-seed differences; job CIs in quadrature where their spread is zero."""
    d, lo, hi = t_interval(diffs, confidence)
    if len(diffs) == 0:
        return d, lo, hi, "none (no shared seed)"
    if (len(diffs) == 1 or _no_spread(diffs)) and var_cis is not None and base_cis is not None:
        half = math.hypot(*(float(np.mean([(c[1] - c[0]) / 2 for c in cis])) for cis in (var_cis, base_cis)))
        return d, d - half, d + half, QUADRATURE_METHOD
    return d, lo, hi, PAIRED_METHOD if len(diffs) >= 2 else "none (one shared seed, no job CIs)"


def _best_variants(values: Mapping[str, pd.Series], higher_is_better: bool | None) -> tuple[set[str], int]:
    """(best variants, number of shared seeds) from each variant's seed → value series, compared on paired seeds.

    Only the seeds every compared variant (one with any value) completed count, so each mean is over the same
    seeds; ties are all best. No direction, no values, or no seed shared by all: nothing is best.
    """
    compared = {v: s for v, s in values.items() if len(s)}
    if not compared:
        return set(), 0
    common = None
    for s in compared.values():
        common = s.index if common is None else common.intersection(s.index)
    if higher_is_better is None or len(common) == 0:
        return set(), int(len(common))
    means = {v: float(s.loc[common].mean()) for v, s in compared.items()}
    target = max(means.values()) if higher_is_better else min(means.values())
    return {v for v, m in means.items() if m == target}, int(len(common))


def summarize(results: pd.DataFrame, metrics: Sequence[str], higher_is_better: Mapping[str, bool],
              baseline: str | None, job_ci: Mapping[tuple, tuple[float, float]] | None = None,
              confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Tidy summary, one row per variant × metric (columns :data:`SUMMARY_COLUMNS`).

    Variants keep the order of ``results``; a variant with no successful job still gets rows (n = 0, NaN) so the
    table shows it rather than silently dropping it.
    """
    job_ci = job_ci or {}
    _check_unique_jobs(results)
    variants = list(dict.fromkeys(results["variant"]))
    rows = []
    for metric in metrics:
        hib = higher_is_better.get(metric)
        base = _ok_values(results, baseline, metric) if baseline in variants else pd.Series(dtype=float)
        metric_rows, values = [], {}
        for variant in variants:
            vals = values[variant] = _ok_values(results, variant, metric)
            mean, lo, hi, method = mean_ci(vals, _job_cis(job_ci, variant, vals.index, metric), confidence)
            row = {"variant": variant, "metric": metric, "higher_is_better": hib, "n": int(len(vals)),
                   "mean": mean, "sd": float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan,
                   "ci_lo": lo, "ci_hi": hi, "ci_method": method, "is_baseline": variant == baseline,
                   "baseline": baseline}
            if baseline is None or baseline not in variants:
                row.update(delta=math.nan, delta_n=0, delta_ci_lo=math.nan, delta_ci_hi=math.nan,
                           delta_ci_method="none (no baseline)", delta_excludes_zero=False)
            elif variant == baseline:
                row.update(delta=0.0, delta_n=int(len(vals)), delta_ci_lo=math.nan, delta_ci_hi=math.nan,
                           delta_ci_method="none (the baseline)", delta_excludes_zero=False)
            else:
                common = vals.index.intersection(base.index)
                diffs = (vals.loc[common] - base.loc[common]).to_numpy()
                d, dlo, dhi, dmethod = delta_ci(diffs, _job_cis(job_ci, variant, common, metric),
                                                _job_cis(job_ci, baseline, common, metric), confidence)
                row.update(delta=d, delta_n=int(len(common)), delta_ci_lo=dlo, delta_ci_hi=dhi,
                           delta_ci_method=dmethod,
                           delta_excludes_zero=bool(np.isfinite(dlo) and (dlo > 0 or dhi < 0)))
            metric_rows.append(row)
        best, best_n = _best_variants(values, hib)
        full_n = len(set().union(*(set(s.index) for s in values.values()))) if values else 0
        for r in metric_rows:
            r.update(best=r["variant"] in best, best_n=best_n, full_n=full_n)
        rows.extend(metric_rows)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
