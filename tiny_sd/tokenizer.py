"""A real CLIP-format BPE tokenizer (vocab.json + merges.txt) for the shapes world.

Same format and pre-tokenisation as OpenAI CLIP's: byte-level alphabet (`bytes_to_unicode`), an
end-of-word suffix ``</w>``, ``<|startoftext|>`` / ``<|endoftext|>`` specials, context padded with the
end token (SD 1.x convention). The merges are learnt here with the textbook BPE procedure
(Sennrich et al. 2016) on the world's captions until every vocabulary word is a single token, so
word heatmaps map one token to one word -- while any other text still tokenises (into pieces),
exactly as an SD tokenizer would.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from . import shapes

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# The context is as long as the world's longest caption ("a large blue diamond and a small red diamond and a
# small blue circle" = 14 words + start + end), not SD's 77. In a causal text encoder every padding token after
# the caption carries a summary of the whole caption; with 77 tokens the 61+ padding tokens took 69-93% of the
# UNet's cross-attention mass in 9 of 11 layers (measured on the 7,750-step tiny_sd; docs/tiny_sd.md), so word
# tokens got ~1% each -- near-uniform attention that neither binds colours to shapes nor gives word heatmaps.
# Longer prompts are refused by `ablations.check_prompts`; a plain `pipe(...)` truncates them with a warning.
MODEL_MAX_LENGTH = 16


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_merges(word_counts: dict[str, int]) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken lexically)."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in word_counts.items()}
    merges: list[tuple[str, str]] = []
    while any(len(w) > 1 for w in words):
        pairs: Counter = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = c
        words = new
    return merges


def caption_word_counts(n: int = 2000) -> dict[str, int]:
    counts: Counter = Counter({w: 1 for w in shapes.vocabulary()})
    for i in range(n):
        counts.update(shapes.sample(shapes.TRAIN_SEED, i).caption.split())
    return dict(counts)


def build_files(out_dir: str | Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for `CLIPTokenizer`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    merges = learn_merges(caption_word_counts())
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True, "errors": "replace", "clean_up_tokenization_spaces": True,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    return out


def load(path: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))
