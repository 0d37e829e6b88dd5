"""End-to-end scoring with the evaluator's feature space: FD/KID sanity, ranking, cache, CIs, provenance."""

import numpy as np
import pytest
import torch

import metrics
from metrics import reference as ref
from metrics import score_images
from tiny_sd import shapes
from metrics.evaluator.augment import _gaussian_blur

N_REF, N_GEN = 200, 64


def real(seed, start, n):
    imgs, caps, _ = shapes.batch(seed, range(start, start + n))
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, caps


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    torch.set_num_threads(1)
    return {"cache_dir": str(tmp_path_factory.mktemp("refcache")), "fid": {"enabled": False},
            "reference": {"n": N_REF}, "kid": {"subsets": 20, "subset_size": 64},
            "uncertainty": {"bootstrap": 50}}


@pytest.fixture(scope="module")
def evaluator():
    from metrics.evaluator import load_evaluator

    return load_evaluator()


def test_real_images_score_like_the_floor_and_degraded_images_rank_worse(cfg, evaluator):
    # generated := held-out real images disjoint from the reference -> FD at the real-vs-real floor
    x, caps = real(shapes.HELDOUT_SEED, 5000, N_GEN)
    r0 = score_images(x, caps, cfg, evaluator=evaluator)
    m0 = r0["metrics"]
    assert m0["fd_evaluator"] < 2 * m0["fd_evaluator_floor"] + 1e-9
    # same distribution: KID (unbiased) is zero up to its spread over subsets
    assert abs(m0["kid_evaluator"]) < 2.5 * m0["kid_evaluator_std"]
    assert m0["colour_acc"] >= 0.95 and m0["clip_evaluator"] > 0.3
    # shifted sets rank correctly: more blur + noise -> larger FD and KID, lower attribute accuracy
    g = torch.Generator().manual_seed(0)
    mild = (_gaussian_blur(x, torch.full((N_GEN,), 0.8)) + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    hard = (_gaussian_blur(x, torch.full((N_GEN,), 3.0)) + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    m1 = score_images(mild, caps, cfg, evaluator=evaluator)["metrics"]
    m2 = score_images(hard, caps, cfg, evaluator=evaluator)["metrics"]
    assert m0["fd_evaluator"] < m1["fd_evaluator"] < m2["fd_evaluator"]
    assert m0["kid_evaluator"] < m1["kid_evaluator"] < m2["kid_evaluator"]
    assert m2["clip_evaluator"] < m0["clip_evaluator"]


def test_identical_sets_give_zero_fd_and_kid(evaluator):
    x, _ = real(shapes.HELDOUT_SEED, 0, 128)
    f = evaluator.image_features(x)
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # Literally identical sets: the unbiased MMD² estimator (Binkowski et al. 2018, as torchmetrics) is not 0 but
    # -2 (mean k(x,x) - mean_{i!=j} k(x_i,x_j)) / m, a small negative number that vanishes as m grows.
    kid, _ = metrics.kernel_inception_distance(f, f, subsets=5, subset_size=128)
    far, _ = metrics.kernel_inception_distance(f, f + 1.0, subsets=5, subset_size=128)
    k = (f.double() @ f.double().T / f.shape[1] + 1) ** 3
    expected = -2 * (k.diag().mean() - (k.sum() - k.diag().sum()) / (128 * 127)) / 128
    assert kid == pytest.approx(float(expected), rel=1e-6) and abs(kid) < 0.05 * far
    # two disjoint samples of the same distribution: KID ~ 0 within its spread, far below a shifted set
    y, _ = real(shapes.HELDOUT_SEED, 1000, 512)
    g = evaluator.image_features(y)
    same, sd = metrics.kernel_inception_distance(f, g, subsets=50, subset_size=128)
    assert abs(same) < 2.5 * sd and abs(same) < 0.05 * far


def test_result_has_ci_provenance_and_direction(cfg, evaluator):
    x, caps = real(shapes.HELDOUT_SEED, 6000, N_GEN)
    r = score_images(x, caps, cfg, evaluator=evaluator,
                     generation={"seeds": [0], "sampler": "DDIMScheduler", "sample_steps": 25, "guidance_scale": 7.5})
    assert set(r) >= {"metrics", "ci", "higher_is_better", "provenance", "primary"}
    assert r["primary"] == "fd_evaluator"  # FID disabled -> configured fallback
    for k in ("fd_evaluator", "kid_evaluator", "clip_evaluator", "colour_acc"):
        lo, hi = r["ci"][k]
        assert lo <= r["metrics"][k] <= hi, (k, lo, hi)
        assert lo < hi or k == "colour_acc"  # accuracy on real images is 1.0 in every resample
    assert r["higher_is_better"]["fd_evaluator"] is False and r["higher_is_better"]["colour_acc"] is True
    p = r["provenance"]
    for k in ("implementation", "extractor", "weights_sha256", "resize", "n", "seeds", "sampler", "sample_steps",
              "guidance_scale"):
        assert p[k] is not None, k
    assert p["n"] == N_GEN and p["sampler"] == "DDIMScheduler" and len(p["weights_sha256"]) == 64
    assert p["reference"]["n"] == N_REF and p["reference"]["dataset"] == "shapes(seed=1)"


def test_reference_stats_cached_second_run_encodes_no_real_images(tmp_path, evaluator):
    c = {"cache_dir": str(tmp_path), "fid": {"enabled": False}, "reference": {"n": 100}, "floor_draws": 1,
         "kid": {"subsets": 5, "subset_size": 32}, "uncertainty": {"bootstrap": 0}}
    x, caps = real(shapes.TRAIN_SEED, 0, 32)
    before = ref.REAL_IMAGES_ENCODED
    r1 = score_images(x, caps, c, evaluator=evaluator)
    assert ref.REAL_IMAGES_ENCODED - before == 100 + 32  # reference + floor set
    assert r1["provenance"]["reference"]["cache"]["evaluator"]["from_cache"] is False
    mid = ref.REAL_IMAGES_ENCODED
    r2 = score_images(x, caps, c, evaluator=evaluator)
    assert ref.REAL_IMAGES_ENCODED == mid  # cache hit: no real features computed
    assert r2["provenance"]["reference"]["cache"]["evaluator"]["from_cache"] is True
    assert r2["metrics"]["fd_evaluator"] == pytest.approx(r1["metrics"]["fd_evaluator"], rel=1e-12)
    # a different N is a different key -> a miss
    score_images(x, caps, {**c, "reference": {"n": 90}}, evaluator=evaluator)
    assert ref.REAL_IMAGES_ENCODED - mid == 90 + 32  # new reference, and the floor set now starts at 90
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_floor_is_the_mean_of_disjoint_real_draws_with_a_ci(tmp_path, evaluator):
    """One real-vs-real draw at small N is noisy; the floor averages `floor_draws` disjoint sets after the reference
    and reports every draw and a t-interval over them."""
    c = {"cache_dir": str(tmp_path), "fid": {"enabled": False}, "reference": {"n": 100}, "floor_draws": 3,
         "kid": {"subsets": 5, "subset_size": 32}, "uncertainty": {"bootstrap": 0}}
    x, caps = real(shapes.TRAIN_SEED, 0, 32)
    before = ref.REAL_IMAGES_ENCODED
    r = score_images(x, caps, c, evaluator=evaluator)
    assert ref.REAL_IMAGES_ENCODED - before == 100 + 3 * 32  # reference + three disjoint floor sets
    draws = r["provenance"]["reference"]["cache"]["evaluator"]["floor_draws"]
    assert draws["draws"] == 3 and draws["first_image"] == 100 and draws["n"] == 32
    fds = draws["fd_evaluator"]
    assert len(fds) == 3 and len(set(fds)) == 3  # different real sets, different distances
    m = r["metrics"]["fd_evaluator_floor"]
    assert m == pytest.approx(np.mean(fds))
    lo, hi = r["ci"]["fd_evaluator_floor"]
    assert lo < m < hi and r["metrics"]["kid_evaluator_floor"] == pytest.approx(np.mean(draws["kid_evaluator"]))


def test_non_shapes_prompts_skip_text_metrics_but_keep_fd(cfg, evaluator):
    x, _ = real(shapes.HELDOUT_SEED, 7000, 16)
    r = score_images(x, ["a photo of a cat"] * 16, cfg, evaluator=evaluator)
    assert "fd_evaluator" in r["metrics"] and "clip_evaluator" not in r["metrics"]
    assert any("vocabulary" in n for n in r["provenance"]["notes"])


def test_mean_ci_and_bootstrap():
    m, lo, hi = metrics.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi
    m1, lo1, hi1 = metrics.mean_ci([5.0])  # one value: no interval (NaN bounds, as every t-interval here)
    assert m1 == 5.0 and np.isnan(lo1) and np.isnan(hi1)
    v = np.random.default_rng(0).normal(size=400)
    lo, hi = metrics.bootstrap_ci(lambda i: float(v[i].mean()), len(v), 300)
    assert lo < v.mean() < hi and hi - lo < 0.3


def test_integer_images_are_refused_before_any_compute(cfg, evaluator):
    x, caps = real(shapes.HELDOUT_SEED, 8000, 8)
    pixels = (x * 255).round().to(torch.uint8)                   # 0-255: clamp(0, 1) would saturate them
    before = ref.REAL_IMAGES_ENCODED
    with pytest.raises(TypeError, match=r"floating point.*torch\.uint8.*float\(\) / 255"):
        score_images(pixels, caps, cfg, evaluator=evaluator)
    assert ref.REAL_IMAGES_ENCODED == before                     # refused before reference features were computed
    s = metrics.Scorer(cfg, evaluator=evaluator)
    for bad in (pixels, pixels.long(), pixels > 0):
        with pytest.raises(TypeError, match="floating point"):
            s.update(bad, caps)
    with pytest.raises(TypeError, match="torch.Tensor"):
        s.update(pixels.numpy(), caps)
    assert s.n == 0


def test_kid_records_the_subset_size_it_used(cfg, evaluator):
    from metrics.kid import kid_subset_size

    assert kid_subset_size(1000, 64, 40) == 40 and kid_subset_size(32, 64, 40) == 32
    # reference (40) smaller than both the configured subset size (64) and the generated N (64)
    x, caps = real(shapes.HELDOUT_SEED, 9000, N_GEN)
    r = score_images(x, caps, {**cfg, "reference": {"n": 40}}, evaluator=evaluator)
    impl = r["provenance"]["implementations"]["kid_evaluator"]
    assert impl.endswith("mean over 20 subsets of 40"), impl      # not min(subset_size, n) = 64
    feats = evaluator.image_features(x)
    with pytest.raises(ValueError, match="at least 2"):          # the same rule decides inside kid_subsets
        metrics.kid_subsets(feats, feats[:1], 2, 64)
