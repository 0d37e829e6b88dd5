"""Fréchet distance between Gaussians fitted to two feature sets (FID: Heusel et al. 2017, eq. 6).

    d² = ||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^½)

Method for the trace term: Σ1 Σ2 is not symmetric, so sqrtm / eigvals on it (scipy, torchmetrics) can return
complex values or tiny imaginary parts when the covariances are rank deficient (N < d, common for small-N
ablations). We use the identity Tr((Σ1 Σ2)^½) = Tr((√Σ1 Σ2 √Σ1)^½): √Σ1 from a symmetric eigendecomposition
(negative round-off eigenvalues clamped to 0), then the eigenvalues of the symmetric PSD matrix √Σ1 Σ2 √Σ1,
clamped at 0 before the square root. Everything in float64. This is exact for PSD inputs and never complex.
"""

from __future__ import annotations

import numpy as np
import torch

from foundation.stats import LEVEL, bootstrap_ci


def _as_f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an N x d feature matrix, got shape {x.shape}")
    return x


def mean_cov(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (N−1 denominator, as torchmetrics and pytorch-fid) of an N x d matrix."""
    x = _as_f64(x)
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(x)}")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; round-off negative eigenvalues are clamped."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((Σ1 Σ2)^½) = Σ_i sqrt(λ_i(√Σ1 Σ2 √Σ1)), with λ clamped at 0."""
    r = sqrt_psd(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance_from_moments(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))
    return max(d, 0.0)  # a distance: clamp the round-off of identical inputs (≈ −1e−12) to 0


def frechet_distance(x, y) -> float:
    """Fréchet distance between two feature matrices (N×d numpy arrays or torch tensors)."""
    x, y = _as_f64(x), _as_f64(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    return frechet_distance_from_moments(*mean_cov(x), *mean_cov(y))


def frechet_distance_to_moments(x, mu, sigma, sqrt_sigma: np.ndarray | None = None) -> float:
    """Fréchet distance between the samples `x` (N×d) and a fixed Gaussian N(mu, sigma), e.g. cached reference
    statistics. Used inside bootstrap loops, so it avoids d×d eigendecompositions when N < d: with
    Σx = XcᵀXc/(N−1), the non-zero eigenvalues of √Σ Σx √Σ equal those of the N×N matrix Xc Σ Xcᵀ/(N−1).
    `sqrt_sigma` (from `sqrt_psd(sigma)`) may be passed to reuse it across calls when N ≥ d.
    """
    x = _as_f64(x)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    mx = x.mean(0)
    xc = x - mx
    if n <= x.shape[1]:
        g = xc @ sigma @ xc.T / (n - 1)
        w = np.linalg.eigvalsh((g + g.T) / 2)
        tr_x = float((xc * xc).sum() / (n - 1))
    else:
        sx = xc.T @ xc / (n - 1)
        r = sqrt_psd(sigma) if sqrt_sigma is None else sqrt_sigma
        m = r @ sx @ r
        w = np.linalg.eigvalsh((m + m.T) / 2)
        tr_x = float(np.trace(sx))
    tr_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    return max(float(((mx - mu) ** 2).sum() + tr_x + np.trace(sigma) - 2 * tr_sqrt), 0.0)


def frechet_distance_ci(x, mu, sigma, n_boot: int, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(FD, lo, hi): the Fréchet distance of the samples `x` (N×d) to the fixed N(mu, sigma) with its percentile
    bootstrap CI over the rows of `x`, re-centred on the estimate (resampled duplicates bias FD upwards)."""
    x = _as_f64(x)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    n = len(x)
    fd = frechet_distance_from_moments(*mean_cov(x), mu, sigma)
    root = sqrt_psd(sigma) if n > x.shape[1] else None  # reused by every replicate (the N >= d branch)
    lo, hi = bootstrap_ci(lambda i: frechet_distance_to_moments(x[i], mu, sigma, root), n, n_boot, level, seed, fd)
    return fd, lo, hi
