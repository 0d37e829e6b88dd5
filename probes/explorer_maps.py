"""What the explorer page (`reports.explorer`) shows of one image, read from a `CrossAttentionProbe`'s running sums:
plain float32 arrays, so `reports` needs nothing from `probes`.

Per *entry* -- each prompt word (its tokens merged by their mean, repeated words merged, as `heatmaps.npz`), the
start token, the end token and the padding (the mean over every padding position) -- and per timestep selection
(every bin together, then each visited bin):

* ``global``: DAAM's global map on the common grid (`heatmaps.token_maps` over `daam_layers`: each (layer, head)
  map upsampled and clamped, then averaged), so the page's "all layers, all timesteps" view is the word's
  ``heatmaps.npz`` map once it is upsampled to the image and normalised, as `word_heatmaps` does;
* ``layer``: each layer's map at its own grid, averaged over heads;
* ``head``: each layer's per-head maps over all timesteps (layers whose buffer keeps more than one head).
"""

from __future__ import annotations

import numpy as np

from foundation import sites

from . import heatmaps as hm
from .attention_maths import token_spans
from .words import word_index

SPECIAL = {"start": "⟨start⟩", "end": "⟨end⟩", "padding": "⟨padding⟩"}


def entries(tokenizer, prompt: str, n_tokens: int) -> list[dict]:
    """[{label, kind, tokens}] in token order: start, the prompt's words (merged as DAAM merges them), end, padding;
    a span the tokenizer does not produce is left out."""
    spans = token_spans(tokenizer, prompt, n_tokens)
    out = [dict(label=SPECIAL["start"], kind="start", tokens=spans[("start", "")])]
    out += [dict(label=w, kind="word", tokens=t) for w, t in word_index(tokenizer, prompt).items()]
    out += [dict(label=SPECIAL[k], kind=k, tokens=spans[(k, "")]) for k in ("end", "padding")]
    return [e for e in out if e["tokens"]]


def explorer_maps(probe, prompt: str, tokenizer, image: int = 0) -> dict:
    """The arrays and labels the explorer needs for image `image` of the recording (see the module docstring)."""
    layers = probe.layers
    n_tokens = probe.buffers[layers[0]].total.shape[-1]
    ents = entries(tokenizer, prompt, n_tokens)
    short = {s.path: s.short for s in sites.sites(probe.unet, "attn2")}
    visited = [(b, lo, hi) for b, lo, hi in probe.bin_table()
               if any(float(probe.buffers[l].count[b]) > 0 for l in layers)]
    daam, grid = set(probe.daam_layers()), probe.finest_grid()
    glob = [[] for _ in ents]
    per_layer = [[[] for _ in layers] for _ in ents]
    per_head = [[None] * len(layers) for _ in ents]
    for bins in [None, *([b] for b, _, _ in visited)]:  # None: every bin together
        maps = [probe.maps(l, bins)[image:image + 1].float() for l in layers]  # (1, heads, h, w, T)
        daam_maps = [m for l, m in zip(layers, maps) if l in daam]
        for e, ent in enumerate(ents):
            toks = list(ent["tokens"])
            glob[e].append(hm.token_maps(daam_maps, toks, grid)[0].mean(0).cpu().numpy())
            for j, m in enumerate(maps):
                tok_mean = m[0, ..., toks].mean(-1)  # (heads, h, w)
                per_layer[e][j].append(tok_mean.mean(0).cpu().numpy())
                if bins is None and m.shape[1] > 1:
                    per_head[e][j] = tok_mean.cpu().numpy()
    return dict(
        prompt=prompt, grid=tuple(grid),
        entries=[dict(label=e["label"], kind=e["kind"], tokens=list(e["tokens"])) for e in ents],
        layers=[dict(path=l, name=short.get(l, l), h=probe.buffers[l].hw[0], w=probe.buffers[l].hw[1],
                     heads=int(probe.buffers[l].total.shape[2]), daam=l in daam) for l in layers],
        bins=[dict(index=b, lo=float(lo), hi=float(hi)) for b, lo, hi in visited],
        global_maps=[np.stack(g) for g in glob],
        layer_maps=[[np.stack(m) for m in per] for per in per_layer],
        head_maps=per_head)
