"""The shapes world: determinism, caption/mask alignment, relations, held-out split, tokenizer."""

import numpy as np
import pytest

from tiny_sd import shapes
from tiny_sd import tokenizer as tok


def test_sample_is_pure_function_of_seed_and_index():
    a, b = shapes.sample(0, 17), shapes.sample(0, 17)
    assert a.caption == b.caption
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.object_masks, b.object_masks)
    c = shapes.sample(0, 18)
    assert not np.array_equal(a.image, c.image)


def test_heldout_split_differs_from_train():
    train = shapes.batch(shapes.TRAIN_SEED, range(64))[0]
    held = shapes.batch(shapes.HELDOUT_SEED, range(64))[0]
    # no held-out image is pixel-identical to a training image of the same index range
    assert not any(np.array_equal(h, t) for h in held for t in train)


@pytest.mark.parametrize("index", range(40))
def test_caption_words_map_to_their_object_masks(index):
    s = shapes.sample(shapes.TRAIN_SEED, index)
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.caption.split() == s.words
    assert 1 <= len(s.objects) <= 3
    for i, (word, obj) in enumerate(s.word_objects):
        if word in shapes.COLOURS:
            o = s.objects[obj]
            assert o.colour == word
            # every masked pixel has exactly the object's colour, and the mask is not empty
            mask = s.word_mask(i)
            assert mask.sum() > 20
            assert (s.image[mask] == shapes.COLOURS[word]).all()
        elif word in shapes.SHAPES:
            assert s.objects[obj].shape == word
        elif word in shapes.SIZES:
            assert s.objects[obj].size == word
        else:
            assert obj is None and s.word_mask(i) is None
    # objects never overlap, so pixels are owned by at most one object
    assert s.object_masks.sum(0).max() <= 1
    # background is everything else
    bg = ~s.object_masks.any(0)
    assert (s.image[bg] == shapes.BACKGROUND).all()


def test_relations_in_captions_hold_in_images():
    checked = 0
    for i in range(200):
        s = shapes.sample(shapes.TRAIN_SEED, i)
        if s.relation is None:
            continue
        a, b = s.objects
        ya, xa = np.argwhere(s.object_masks[0]).mean(0)
        yb, xb = np.argwhere(s.object_masks[1]).mean(0)
        expect = {"left of": xa < xb, "right of": xa > xb, "above": ya < yb, "below": ya > yb}[s.relation]
        assert expect, (s.caption, (xa, ya), (xb, yb))
        assert s.caption.split()[-2:] == [b.colour, b.shape]
        checked += 1
    assert checked > 50


def test_world_has_required_diversity():
    seen = [shapes.sample(0, i) for i in range(400)]
    colours = {o.colour for s in seen for o in s.objects}
    kinds = {o.shape for s in seen for o in s.objects}
    rels = {s.relation for s in seen} - {None}
    assert len(colours) >= 6 and len(kinds) >= 4 and rels == set(shapes.RELATIONS)
    assert {len(s.objects) for s in seen} == {1, 2, 3}


def test_parse_prompt_and_vocabulary_errors():
    assert shapes.parse_prompt("a red circle left of a blue square") == [("red", "circle", None), ("blue", "square", None)]
    assert shapes.prompt_relation("a red circle left of a blue square") == "left of"
    with pytest.raises(ValueError, match="not in the shapes-world vocabulary.*circle"):
        shapes.parse_prompt("a magenta circle")


def test_context_fits_the_longest_caption_the_world_makes(tmp_path):
    """Three objects, each with a size word, is the longest caption the grammar makes: it must fit the
    context exactly (no truncation), and nothing longer is made by any split."""
    t = tok.load(tok.build_files(tmp_path))
    rng = np.random.default_rng(0)
    longest = shapes.sample_scene(rng, 3, with_size=True).caption
    assert len(longest.split()) == 14
    assert len(t(longest).input_ids) == t.model_max_length
    for seed in (shapes.TRAIN_SEED, shapes.HELDOUT_SEED):
        for i in range(300):
            assert len(t(shapes.sample(seed, i).caption).input_ids) <= t.model_max_length


def test_colour_segmentation_recovers_masks_on_real_images():
    for i in range(10):
        s = shapes.sample(1, i)
        lab = shapes.colour_segmentation(s.image)
        for o, m in zip(s.objects, s.object_masks):
            k = list(shapes.COLOURS).index(o.colour)
            assert ((lab == k) == m).mean() > 0.99 or any(o2.colour == o.colour for o2 in s.objects if o2 is not o)


def test_tokenizer_is_clip_format_with_one_token_per_world_word(tmp_path):
    t = tok.load(tok.build_files(tmp_path))
    assert t.model_max_length == tok.MODEL_MAX_LENGTH
    for w in shapes.vocabulary():
        assert len(t.tokenize(w)) == 1, w
    ids = t("a red circle", padding="max_length", max_length=t.model_max_length).input_ids
    assert len(ids) == t.model_max_length and ids[0] == t.bos_token_id and ids[4] == t.eos_token_id
    assert ids[-1] == t.pad_token_id == t.eos_token_id  # SD 1.x pads with the end token
    # text outside the world still tokenises (into pieces), as in any BPE tokenizer
    assert len(t.tokenize("hexagon")) > 1


def test_redraw_keeps_the_caption_and_stated_sizes_and_moves_the_objects():
    """The real-vs-real floor's images: the same prompt drawn again (benchmarks/tiny_sd_quality.py)."""
    stated = unstated = 0
    for i in range(60):
        s = shapes.sample(shapes.HELDOUT_SEED, i)
        r = shapes.redraw(s, np.random.default_rng(i))
        assert r.caption == s.caption and r.relation == s.relation
        assert [(o.colour, o.shape) for o in r.objects] == [(o.colour, o.shape) for o in s.objects]
        assert [o.cx for o in r.objects] != [o.cx for o in s.objects]
        if any(w in shapes.SIZES for w in s.words):
            stated += 1
            assert [o.size for o in r.objects] == [o.size for o in s.objects]
        else:
            unstated += [o.size for o in r.objects] != [o.size for o in s.objects]
        if s.relation:
            assert shapes._satisfies(s.relation, *r.objects)
        assert not (r.object_masks.sum(0) > 1).any()  # objects never overlap
    assert stated > 0 and unstated > 0  # unstated sizes are redrawn, so some change
