"""The independent shapes evaluator: held-out accuracy, image-text similarity, attribute scoring, shipped files."""

import json

import pytest
import torch

from tiny_sd import shapes
from metrics.evaluator import WEIGHTS_DIR, augment, heldout_accuracy, load_evaluator


@pytest.fixture(scope="module")
def ev():
    torch.set_num_threads(1)
    return load_evaluator()


@pytest.fixture(scope="module")
def heldout():
    imgs, caps, samples = shapes.batch(shapes.HELDOUT_SEED, range(300))
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, caps, samples


def test_heldout_accuracy_at_least_95_percent(ev):
    acc = heldout_accuracy(ev, n=300)
    assert acc["colour_acc"] >= 0.95 and acc["shape_acc"] >= 0.95, acc
    assert acc["n_objects"] > 300  # 1-3 objects per image


def test_accuracy_survives_degradation(ev):
    # noise, blur, colour jitter and rescaling stand in for generated-image artefacts
    acc = heldout_accuracy(ev, n=200, augment_seed=123)
    assert acc["colour_acc"] >= 0.9 and acc["shape_acc"] >= 0.9, acc


def test_clip_score_ranks_matching_above_mismatched(ev, heldout):
    x, caps, _ = heldout
    match = ev.clip_score(x, caps)
    rolled = caps[1:] + caps[:1]
    mismatch = ev.clip_score(x, rolled)
    assert match.shape == (len(caps),)
    assert match.mean() > mismatch.mean() + 0.2
    assert (match > mismatch).float().mean() > 0.9


def test_clip_score_prefers_right_colour_and_relation(ev):
    s = shapes.sample(shapes.HELDOUT_SEED, 0, n_objects=1)
    o = s.objects[0]
    other = next(c for c in shapes.COLOURS if c != o.colour)
    x = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255
    right = ev.clip_score(x, [f"a {o.colour} {o.shape}"])
    wrong = ev.clip_score(x, [f"a {other} {o.shape}"])
    assert right > wrong


def test_attribute_scores_on_real_images_and_swapped_prompts(ev, heldout):
    x, caps, samples = heldout
    scores = ev.attribute_scores(x, caps)
    assert sum(s["all_correct"] for s in scores) / len(scores) >= 0.95
    two = [i for i, s in enumerate(samples) if s.relation is not None]
    rel = [scores[i]["relation_correct"] for i in two]
    assert sum(rel) / len(rel) >= 0.95
    assert all(scores[i]["relation_correct"] is None for i in range(len(samples)) if samples[i].relation is None)
    # swapping the two object phrases makes the stated relation false
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    wrong = [caps[i].replace(samples[i].relation, flip[samples[i].relation]) for i in two]
    bad = ev.attribute_scores(x[two], wrong)
    assert sum(b["relation_correct"] for b in bad) / len(bad) <= 0.05
    # a prompt naming the wrong colour is scored as wrong colour, right shape
    s0 = samples[0]
    o = s0.objects[0]
    other = next(c for c in shapes.COLOURS if c not in [q.colour for q in s0.objects])
    r = ev.attribute_scores(x[:1], [f"a {other} {o.shape}"])[0]
    assert r["objects"][0]["colour_ok"] is False and not r["all_correct"]


def test_detect_objects_positions_and_any_resolution(ev, heldout):
    x, _, samples = heldout
    big = torch.nn.functional.interpolate(x[:8], size=128, mode="nearest")  # pipelines may produce other sizes
    det = ev.detect_objects(big)
    for d, s in zip(det, samples[:8]):
        assert len(d) == len(s.objects)
        for m in s.object_masks:  # detected centres are mask centroids
            ys, xs = m.nonzero()
            assert min(abs(q.cx - xs.mean() - 0.5) + abs(q.cy - ys.mean() - 0.5) for q in d) < 1.5


def test_features_shape_and_device_contract(ev, heldout):
    x = heldout[0][:5]
    f = ev.image_features(x)
    assert f.shape == (5, ev.cfg["feature_dim"]) and f.dtype == torch.float32
    t = ev.text_features(["a red circle", "a blue square left of a red circle"])
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="vocabulary"):
        ev.text_features(["a photo of a cat"])
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        ev.image_features(torch.zeros(2, 64, 64))


def test_shipped_files_small_fp16_and_recorded():
    w = WEIGHTS_DIR / "model.safetensors"
    assert w.stat().st_size < 3_000_000
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(w)).values())
    rec = json.loads((WEIGHTS_DIR / "training_record.json").read_text())
    assert rec["seed"] == json.loads((WEIGHTS_DIR / "config.json").read_text())["seed"]
    # the shipped weights were built before the evaluator moved to metrics/evaluator/
    assert rec["git_revision"] and rec["command"] == "python -m tiny_sd.evaluator --train"
    assert rec["heldout_accuracy"]["clean"]["colour_acc"] >= 0.95


def test_augment_is_seeded():
    x = torch.rand(2, 3, 64, 64)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_prompt_is_judged_on_its_most_salient_objects():
    """A small blob of the right colour/shape next to a large wrong object does not make the image right:
    otherwise an image of many random blobs passes (as a random-weights UNet's images did)."""
    from metrics.evaluator import DetectedObject, score_prompt

    big_wrong = DetectedObject("blue", "square", 20, 45, area=300, colour_prob=1, shape_prob=1)
    small_right = DetectedObject("red", "circle", 50, 50, area=20, colour_prob=1, shape_prob=1)
    r = score_prompt("a red circle", [small_right, big_wrong])
    assert not r["all_correct"] and r["colour_acc"] == 0 and r["n_detected"] == 2 and not r["count_correct"]
    # the same small object alone, or the largest of the image, is right
    assert score_prompt("a red circle", [small_right])["all_correct"]
    big_right = DetectedObject("red", "circle", 50, 50, area=400, colour_prob=1, shape_prob=1)
    assert score_prompt("a red circle", [big_wrong, big_right])["all_correct"]
    # two named objects: the two largest components are matched, in either detection order
    r2 = score_prompt("a red circle left of a blue square", [big_wrong, small_right, big_right])
    assert r2["all_correct"] and r2["relation_correct"] is False  # the red circle (x=50) is right of the square (x=20)
    assert score_prompt("a red circle right of a blue square", [big_wrong, small_right, big_right])["relation_correct"]
