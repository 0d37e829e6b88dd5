"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets. Unlike FID it is unbiased in N, so it is the fairer
number at the small N of ablation sweeps. The kernel/MMD maths is torchmetrics' (`poly_mmd`); we add the
subset sampling on given feature matrices (so cached reference features can be reused) and a seed.
"""

from __future__ import annotations

import numpy as np
import torch

from foundation.stats import LEVEL, bootstrap_ci

from ._fidelity import import_torchmetrics_image


def kid_subset_size(subset_size: int, n_gen: int, n_ref: int) -> int:
    """The subset size KID actually uses: the configured size capped by both sets' sizes.

    The one place this is decided: :func:`kid_subsets` samples subsets of this size and metrics/score.py records it
    in the provenance, so the recorded m is the m that was used.
    """
    return min(int(subset_size), int(n_gen), int(n_ref))


def kid_subsets(x: torch.Tensor, y: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                seed: int = 0, device=None) -> np.ndarray:
    """MMD² of `subsets` random subset pairs (without replacement inside a subset); size capped at min N.

    Computed in float64 (the unbiased estimator subtracts large kernel sums) on `device` (default: CPU).
    """
    poly_mmd = import_torchmetrics_image().kid.poly_mmd
    x = torch.as_tensor(x).to(device or "cpu", torch.float64)
    y = torch.as_tensor(y).to(device or "cpu", torch.float64)
    m = kid_subset_size(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    vals = [float(poly_mmd(x[torch.randperm(len(x), generator=g)[:m]], y[torch.randperm(len(y), generator=g)[:m]]))
            for _ in range(subsets)]
    return np.array(vals)


def kid_ci(x, y, subsets: int, bootstrap_subsets: int, subset_size: int, n_boot: int, level: float = LEVEL,
           seed: int = 0, device=None) -> tuple[float, float, float, float]:
    """(KID, std over subsets, lo, hi) of the samples `x` (N×d array) against the fixed `y`, with the percentile
    bootstrap CI over the rows of `x` (each replicate a mean over `bootstrap_subsets` subsets), re-centred on the
    estimate."""
    kid = kid_subsets(x, y, subsets, subset_size, seed, device)
    mean = float(kid.mean())

    def replicate(i: np.ndarray) -> float:
        return float(kid_subsets(x[i], y, bootstrap_subsets, subset_size, seed, device).mean())

    lo, hi = bootstrap_ci(replicate, len(x), n_boot, level, seed, mean)
    return mean, float(kid.std()), lo, hi


def kernel_inception_distance(x, y, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of KID over subsets, as torchmetrics' KernelInceptionDistance reports it."""
    v = kid_subsets(x, y, subsets, subset_size, seed)
    return float(v.mean()), float(v.std(ddof=0))
