"""Uncertainty, written once: the percentile bootstrap over examples and the Student-t interval over seeds.

Every CI in the toolkit comes from here, so they share one resampling rule (indices drawn with replacement, all
replicates from one generator: `rng.integers(0, n, (n_boot, n))`) and one convention for too little data: bounds of
NaN, never a zero-width interval.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices into n examples, resampled with replacement."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 200, level: float = LEVEL,
                 seed: int = 0, center: float | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI (Efron & Tibshirani 1993, ch. 13) of `statistic(indices)` over n examples.

    `center`: the point estimate of a statistic that resampling biases (FD and KID: duplicated images act like a
    smaller N); the replicates are shifted so that their mean sits on it before the quantiles (ch. 10).
    (nan, nan) without replicates or with fewer than 2 examples."""
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    vals = np.array([statistic(i) for i in bootstrap_indices(n, n_boot, seed)], np.float64)
    if center is not None:
        vals = vals - vals.mean() + center
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def bootstrap_mean_ci(values, n_boot: int = 1000, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite `values`: the percentile bootstrap of the mean (vectorised `bootstrap_ci`)."""
    v = finite(values)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if n_boot <= 0 or v.size < 2:
        return float(v.mean()), float("nan"), float("nan")
    means = v[bootstrap_indices(v.size, n_boot, seed)].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite `values` with the Student-t interval of the mean; NaN bounds below 2 values."""
    x = finite(values)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) of a proportion successes / n, through scipy's `binomtest`: it keeps
    width at 0 and n successes, where a bootstrap of 0/1 values collapses to a point. NaN bounds for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = _scipy_stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def finite(values) -> np.ndarray:
    """The finite entries of `values` (None and NaN dropped) as float64."""
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
