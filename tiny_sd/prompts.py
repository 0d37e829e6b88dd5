"""Prompt checks for any pipeline (`foundation.prompts`) plus, for tiny_sd, the shapes-world vocabulary: the model has
never seen another word, so a heatmap or a score for one would be meaningless."""

from __future__ import annotations

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


__all__ = ["check_prompts", "is_tiny_sd"]
