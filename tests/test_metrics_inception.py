"""FID's Inception path: never downloads; clear message when the weights file is missing; runs from a local file."""

import pytest
import torch

from metrics import InceptionWeightsMissing, Scorer, find_inception_weights, score_images
from metrics.inception import ENV_VAR, INCEPTION_FILE, INCEPTION_URL, InceptionExtractor, save_random_inception


@pytest.fixture()
def no_weights_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


def test_missing_weights_message_names_the_file(no_weights_anywhere):
    missing = no_weights_anywhere / "inception.pth"
    with pytest.raises(InceptionWeightsMissing) as e:
        find_inception_weights(missing)
    msg = str(e.value)
    assert INCEPTION_FILE in msg and str(missing) in msg and "metrics.fid.weights" in msg and ENV_VAR in msg


def test_sweep_falls_back_to_evaluator_fd_when_weights_missing(no_weights_anywhere):
    from tiny_sd import shapes

    imgs, caps, _ = shapes.batch(shapes.HELDOUT_SEED, range(9000, 9016))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    cfg = {"cache_dir": str(no_weights_anywhere / "c"), "reference": {"n": 40}, "floor": False,
           "fid": {"weights": str(no_weights_anywhere / "missing.pth")}, "uncertainty": {"bootstrap": 0},
           "kid": {"subsets": 3, "subset_size": 16}}
    with pytest.warns(UserWarning, match="FID skipped"):
        r = score_images(x, caps, cfg)
    assert "fid" not in r["metrics"] and r["primary"] == "fd_evaluator"
    assert r["provenance"]["fid_status"].startswith("unavailable") and INCEPTION_FILE in r["provenance"]["fid_status"]


def test_corrupt_weights_file_falls_back_with_a_message_naming_it(no_weights_anywhere):
    bad = no_weights_anywhere / INCEPTION_FILE
    bad.write_bytes(b"<html>truncated download</html>")          # exists, so it is found; torch.load fails
    with pytest.warns(UserWarning, match="FID skipped"):
        s = Scorer({"cache_dir": str(no_weights_anywhere / "c"), "fid": {"weights": str(bad)}})
    assert "inception" not in s.extractors and s.primary == "fd_evaluator"   # the fallback, as when missing
    status = s.fid_status
    assert status.startswith("unavailable") and str(bad) in status and "could not be loaded" in status
    assert INCEPTION_URL in status and "metrics.fid.weights" in status      # how to fix it


def test_no_computable_fallback_is_an_error_before_any_image(no_weights_anywhere):
    # FID cannot run and the fallback (fd_evaluator) needs the disabled evaluator: say so now, not after sampling
    cfg = {"fid": {"weights": str(no_weights_anywhere / "missing.pth")}, "evaluator": {"enabled": False}}
    with pytest.warns(UserWarning, match="FID skipped"), pytest.raises(ValueError) as e:
        Scorer(cfg)
    assert "metrics.primary='fid'" in str(e.value) and "metrics.fid.fallback='fd_evaluator'" in str(e.value)
    assert Scorer({**cfg, "primary": "fd_evaluator", "fid": {"enabled": False}, "evaluator": {"enabled": True}}
                  ).primary == "fd_evaluator"


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.set_num_threads(1)
    return save_random_inception(tmp_path_factory.mktemp("inc") / INCEPTION_FILE, seed=0)


def test_present_weights_give_fid_kid_with_provenance(random_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(random_weights))  # found through the environment variable
    ext = InceptionExtractor()
    assert ext.path == random_weights and not ext.official_weights  # random weights are flagged as such
    x = torch.rand(2, 3, 64, 64)
    f = ext(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()

    from tiny_sd import shapes

    imgs, caps, _ = shapes.batch(shapes.HELDOUT_SEED, range(9100, 9104))
    gen = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    cfg = {"cache_dir": str(tmp_path), "reference": {"n": 6}, "floor": False, "evaluator": {"enabled": False},
           "uncertainty": {"bootstrap": 0}, "kid": {"subsets": 3, "subset_size": 4}}
    # the 64-d early Inception features keep this CPU test fast; the scoring path is the same as for 2048
    ext64 = InceptionExtractor(feature=64)
    r = score_images(gen, caps, cfg, extractors={"inception": ext64})
    assert r["primary"] == "fid" and r["metrics"]["fid"] > 0 and "kid_inception" in r["metrics"]
    p = r["provenance"]
    assert p["fid_status"] == "ok" and p["extractor"] == "inception-v3-compat/pool64"
    assert p["weights_sha256"] == ext.weights_sha256 and "299" in p["resize"]
