"""Tidy tables of a `CrossAttentionProbe`'s recordings: `maps.csv` (word x layer x timestep bin, docs/CONTRACTS.md),
`token_mass.csv` (where the softmax mass goes) and `heads.csv` (entropy per head). Images are prompt-major, as the
pipeline returns them.
"""

from __future__ import annotations

import pandas as pd

from . import heatmaps as hm
from .attention_maths import token_spans
from .hooks import ProbeError
from .words import word_tokens


def per_image(probe, prompts: list[str]):
    """(layer, bin, lo, hi, image index, prompt, (1, heads, h, w, T) mean map) over recorded layers x bins x
    images, skipping bins no call fell into."""
    for layer in probe.layers:
        buf = probe.buffers[layer]
        for b, lo, hi in probe.bin_table():
            if float(buf.count[b]) == 0:
                continue
            m = probe.maps(layer, [b])
            per = m.shape[0] // len(prompts)
            for i in range(m.shape[0]):
                yield layer, b, lo, hi, i, prompts[i // per], m[i:i + 1]


def maps_table(probe, prompts: list[str], tokenizer) -> pd.DataFrame:
    """`maps.csv`: per word x layer x timestep bin x image, the word's raw attention map's mean, max and spatial
    entropy, and the layer's mean head entropy."""
    words_of = {p: [wt for wt in word_tokens(tokenizer, p) if not wt.truncated] for p in set(prompts)}
    rows = []
    for layer, b, lo, hi, i, prompt, m in per_image(probe, prompts):
        buf = probe.buffers[layer]
        head_ent = float(buf.mean_entropy(b)[i].mean())
        for wt in words_of[prompt]:
            wm = hm.token_map(m, wt.tokens)  # (1, h, w) raw probability
            rows.append(dict(
                word=wt.word, token_index=wt.tokens[0], layer=layer, resolution=probe.resolution(layer),
                t_bin=b, t_lo=lo, t_hi=hi, mean=float(wm.mean()), max=float(wm.max()),
                entropy=float(hm.spatial_entropy(wm)[0]), image_index=i, word_index=wt.index,
                n_tokens=len(wt.tokens), head_entropy=head_ent))
    return pd.DataFrame(rows)


def token_mass_table(probe, prompts: list[str], tokenizer) -> pd.DataFrame:
    """`token_mass.csv`: share of attention on the start token, each word, the end token and the padding
    (`attention_maths.token_spans`), per image x layer x timestep bin; shares sum to 1."""
    if not probe.layers:
        raise ProbeError("no cross-attention was recorded: run the pipeline inside `with probe:` first")
    n_tokens = probe.buffers[probe.layers[0]].total.shape[-1]
    spans_of = {p: token_spans(tokenizer, p, n_tokens) for p in set(prompts)}
    rows = []
    for layer, b, lo, hi, i, prompt, m in per_image(probe, prompts):
        spans = spans_of[prompt]
        for (part, word), share in hm.token_mass(m, spans).items():
            rows.append(dict(image_index=i, layer=layer, resolution=probe.resolution(layer), t_bin=b, t_lo=lo,
                             t_hi=hi, part=part, word=word, n_tokens=len(spans[(part, word)]),
                             share=float(share[0])))
    return pd.DataFrame(rows)


def head_entropy_table(probe) -> pd.DataFrame:
    """`heads.csv`: entropy over tokens (nats) per layer x head x timestep bin x image."""
    rows = []
    for layer, buf in probe.buffers.items():
        for b, lo, hi in probe.bin_table():
            c = float(buf.count[b])
            if c == 0:
                continue
            ent = buf.mean_entropy(b).cpu()
            for i in range(ent.shape[0]):
                for h in range(ent.shape[1]):
                    rows.append(dict(layer=layer, resolution=probe.resolution(layer), head=h, t_bin=b,
                                     t_lo=lo, t_hi=hi, image_index=i, entropy=float(ent[i, h])))
    return pd.DataFrame(rows)
