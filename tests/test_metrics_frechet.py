"""Fréchet distance numerics against an independent computation (scipy.linalg.sqrtm) and on rank-deficient inputs."""

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics import FeatureStats, frechet_distance, frechet_distance_to_moments, mean_cov


def scipy_fd(x, y):
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("d", [4, 16, 64])
def test_matches_scipy_sqrtm_well_conditioned(d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(d, d))
    x = rng.normal(size=(2000, d)) @ (a / np.sqrt(d) + np.eye(d))
    y = rng.normal(size=(1500, d)) * 1.3 + 0.4
    ref = scipy_fd(x, y)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)
    # torch input gives the same number
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref, rel=1e-9)


def test_identical_sets_are_zero_and_symmetric():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 20)), rng.normal(size=(300, 20)) + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)


def test_rank_deficient_n_less_than_d_is_finite_and_consistent():
    rng = np.random.default_rng(1)
    d = 128
    x, y = rng.normal(size=(40, d)), rng.normal(size=(50, d)) + 0.5
    fd = frechet_distance(x, y)
    assert np.isfinite(fd) and fd > 0
    # the Gram-matrix route (N < d) used in bootstrap loops agrees with the d x d route
    mu, s = mean_cov(y)
    # (1e-6: the d x d route adds sqrt of round-off eigenvalues ~1e-14 of the null space)
    assert frechet_distance_to_moments(x, mu, s) == pytest.approx(fd, rel=1e-6)
    # and with scipy where sqrtm still converges (it returns a complex result with tiny imaginary part)
    assert fd == pytest.approx(scipy_fd(x, y), rel=1e-4)


def test_to_moments_large_n_route_matches():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 8)), rng.normal(size=(400, 8)) * 2
    assert frechet_distance_to_moments(x, *mean_cov(y)) == pytest.approx(frechet_distance(x, y), rel=1e-9)


def test_streaming_stats_equal_batch_moments_with_large_offset():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 10)) + 1e4  # large mean: naive E[xx^T] - mu mu^T would cancel badly
    st = FeatureStats(10)
    for i in range(0, 1000, 128):
        st.update(torch.from_numpy(x[i:i + 128]))
    mu, cov = mean_cov(x)
    np.testing.assert_allclose(st.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(st.cov, cov, rtol=1e-8, atol=1e-10)
    assert st.features.dtype == torch.float16 and st.features.shape == (1000, 10)


def test_matches_torchmetrics_fid_formula():
    from metrics._fidelity import import_torchmetrics_image

    fid = import_torchmetrics_image().fid
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(600, 12)), rng.normal(size=(700, 12)) * 0.8 + 0.2
    m1, s1 = mean_cov(x)
    m2, s2 = mean_cov(y)
    tm = float(fid._compute_fid(*(torch.from_numpy(a) for a in (m1, s1, m2, s2))))
    assert frechet_distance(x, y) == pytest.approx(tm, rel=1e-8)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
