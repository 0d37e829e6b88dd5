"""Uncertainty: percentile bootstrap over images, and mean ± t-interval over seeds.

FID is biased at small N and moves by ~1-2% between resamples, so a single number says little: we report a
bootstrap CI over generated images (reference statistics held fixed: the CI covers sampling of the generated
set) and, across sampling seeds, the mean with a Student-t CI.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 200, level: float = 0.95,
                 seed: int = 0, center: float | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(indices) with indices resampled with replacement from range(n).

    `center`: the point estimate of a statistic that resampling biases (FD and KID: duplicated images act like
    a smaller N, and FD's small-N bias is upward); the bootstrap distribution is shifted so that its mean sits on
    `center` before taking quantiles (bias-corrected percentile interval, Efron & Tibshirani 1993, ch. 10).
    """
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], np.float64)
    if center is not None:
        vals = vals - vals.mean() + center
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) with a Student-t interval; the interval is (mean, mean) for a single value."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half
