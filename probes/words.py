"""Prompt words -> token positions, so a multi-token word gets one merged heatmap.

We re-tokenise each whitespace-separated word on its own and walk the prompt's token sequence
(DAAM's approach; Tang et al. 2023, `compute_token_merge_indices`). CLIP's BPE pre-tokenises on
whitespace, so a word's tokens in context equal its tokens alone; the walk makes that an
invariant we check rather than assume. Words pushed past the 77-token context by truncation are
reported as truncated (empty positions) instead of silently mapping to the wrong tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WordTokens:
    word: str
    index: int  # position of the word in the prompt (0-based)
    tokens: tuple[int, ...]  # positions in the padded token sequence (BOS is position 0)

    @property
    def truncated(self) -> bool:
        return not self.tokens


def prompt_words(prompt: str) -> list[str]:
    return prompt.lower().split()


def word_tokens(tokenizer, prompt: str) -> list[WordTokens]:
    """Token positions of every word of `prompt` in the tokenizer's padded, truncated sequence."""
    max_len = getattr(tokenizer, "model_max_length", 77)
    ids = tokenizer(prompt, truncation=True, max_length=max_len).input_ids
    has_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    cursor = 1 if has_bos else 0
    last = len(ids) - (1 if ids and ids[-1] == tokenizer.eos_token_id else 0)  # exclude the end token
    out = []
    for i, w in enumerate(prompt_words(prompt)):
        wid = tokenizer(w, add_special_tokens=False).input_ids
        n_fit = max(0, min(len(wid), last - cursor))
        if n_fit < len(wid):  # truncated (partly or wholly): no honest map for this word
            out.append(WordTokens(w, i, ()))
            cursor = last
            continue
        if ids[cursor:cursor + len(wid)] != wid:
            raise ValueError(f"word {w!r} does not tokenise the same alone as inside {prompt!r}")
        out.append(WordTokens(w, i, tuple(range(cursor, cursor + len(wid)))))
        cursor += len(wid)
    return out


def word_index(tokenizer, prompt: str) -> dict[str, tuple[int, ...]]:
    """{word: token positions}, merging repeated words (DAAM merges every occurrence of a word)."""
    merged: dict[str, list[int]] = {}
    for wt in word_tokens(tokenizer, prompt):
        if not wt.truncated:
            merged.setdefault(wt.word, []).extend(wt.tokens)
    return {w: tuple(v) for w, v in merged.items()}


def resolve_word(tokenizer, prompt: str, word: str) -> tuple[int, ...]:
    """Token positions of `word`; a clear error when it is absent or truncated away."""
    word = word.lower()
    wts = word_tokens(tokenizer, prompt)
    if word not in {wt.word for wt in wts}:
        raise KeyError(f"word {word!r} is not in the prompt {prompt!r}; its words are "
                       f"{sorted({wt.word for wt in wts})}")
    idx = word_index(tokenizer, prompt).get(word)
    if not idx:
        raise ValueError(f"word {word!r} lies beyond the tokenizer's {tokenizer.model_max_length}-token "
                         f"limit in {prompt!r} and was truncated, so it has no attention map")
    return idx


def word_positions(tokenizer, prompt: str, index: int) -> tuple[int, ...]:
    """Token positions of word `index` of the prompt (that occurrence only); ValueError if truncated away."""
    for wt in word_tokens(tokenizer, prompt):
        if wt.index == index:
            if wt.truncated:
                break
            return wt.tokens
    raise ValueError(f"word {index} of {prompt!r} lies beyond the tokenizer's {tokenizer.model_max_length}-token limit")
