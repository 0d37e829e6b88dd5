"""Prompt checks for any pipeline (`foundation.prompts`) plus, for tiny_sd, the shapes-world vocabulary: the model has
never seen another word, so a heatmap or a score for one would be meaningless."""

from __future__ import annotations

import numpy as np

from foundation import prompts as generic
from foundation.prompts import is_tiny_sd

from . import shapes


def check_prompts(pipe, prompts, height: int | None = None, width: int | None = None) -> None:
    """Raise ValueError with the fix: a word outside the world (tiny_sd only), too many tokens, a bad size."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if is_tiny_sd(pipe):
        for p in prompts:
            shapes.parse_prompt(p)  # raises with the vocabulary listed
    generic.check_prompts(pipe, prompts, height, width)




# ---------------------------------------------------------------------------------------------
# words as attributes, and counterfactual prompt pairs (the causal probes' ground truth)

ATTRIBUTES = ("colour", "shape", "relation")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def word_attribute(word: str) -> str | None:
    """Which attribute the evaluator can read for a prompt word: colour, shape, relation (None: size, articles)."""
    word = word.lower()
    return ("colour" if word in shapes.COLOURS else "shape" if word in shapes.SHAPES
            else "relation" if word in OPPOSITE else None)


def object_of_word(prompt: str, index: int) -> int | None:
    """Index of the object (in `shapes.parse_prompt` order) that word `index` of `prompt` describes: a colour or
    size word describes the next shape noun; None for relations and articles."""
    words = prompt.lower().split()
    if word_attribute(words[index]) not in ("colour", "shape") and words[index] not in shapes.SIZES:
        return None
    return sum(w in shapes.SHAPES for w in words[:index])


def counterfactual_pairs(vary: str, n: int, seed: int = shapes.HELDOUT_SEED, first: int = 0) -> list[tuple[str, str]]:
    """n (prompt, counterfactual) pairs of held-out captions that differ in one word of attribute `vary`.

    Colour and shape: one object's word replaced by one no other object in the caption has (so the changed object
    stays unambiguous) and that keeps the article ("a"/"an") unchanged. Relation: left <-> right, above <-> below,
    on two-object captions. The caption and the object changed are pure functions of (seed, index)."""
    if vary not in ATTRIBUTES:
        raise ValueError(f"vary={vary!r}: one of {', '.join(ATTRIBUTES)}")
    pool = {"colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES)}.get(vary)
    out, i = [], first
    while len(out) < n:
        rng = np.random.default_rng([int(seed), int(i), 7])
        s = shapes.sample(seed, i, n_objects=2 if vary == "relation" else int(rng.choice([1, 2])))
        i += 1
        words = s.caption.split()
        if vary == "relation":
            at = next(k for k, w in enumerate(words) if w in OPPOSITE)
            new = OPPOSITE[words[at]]
        else:
            slots = [k for k, w in enumerate(words) if word_attribute(w) == vary]
            at = slots[int(rng.integers(len(slots)))]
            used = set(words)
            options = [w for w in pool if w not in used and
                       (at == 0 or words[at - 1] not in ("a", "an") or words[at - 1] == ("an" if w[0] in "aeiou" else "a"))]
            if not options:
                continue
            new = options[int(rng.integers(len(options)))]
        out.append((s.caption, " ".join(words[:at] + [new] + words[at + 1:])))
    return out


__all__ = ["check_prompts", "is_tiny_sd", "ATTRIBUTES", "OPPOSITE", "word_attribute", "object_of_word",
           "counterfactual_pairs"]
