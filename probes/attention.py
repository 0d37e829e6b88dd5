"""Cross-attention maps of every ``attn2``, aggregated on the device while sampling.

A recording processor wraps each cross-attention module's own processor (so the UNet output is
bit-identical to running without the probe, and whatever processor was installed keeps working);
beside it, it computes softmax(Q K^T / sqrt(d)) for the *conditional* rows only -- cheap, since keys
are the text tokens (77 in SD) -- and adds it into a buffer of shape (timestep bin, image, head, query, token)
allocated at the layer's first call. Memory is therefore flat in the number of steps, unlike storing
every map (DAAM stores them: ~1.7 GB for SD1.5 over 50 steps). Self-attention keeps its fused SDPA;
its maps are recorded only at resolutions asked for. Prompt-to-Prompt (Hertz et al. 2022) and DAAM
(Tang et al. 2023) read the same quantity.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import Counter

import numpy as np
import pandas as pd
import torch

from . import heatmaps as hm
from .hooks import Probe, ProbeError, find_modules, resolution_chain
from .words import resolve_word, word_index, word_tokens


def is_cross_attention(path: str, module) -> bool:
    return path.endswith("attn2") and hasattr(module, "set_processor") and getattr(module, "is_cross_attention", True)


def is_self_attention(path: str, module) -> bool:
    return path.endswith("attn1") and hasattr(module, "set_processor")


def attention_probs(attn, hidden_states: torch.Tensor, context: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale) of a diffusers `Attention` module: (B, heads, queries, keys).

    Mirrors the pre-processing of `AttnProcessor2_0` (group norm, cross-norm, q/k norms) so the
    probabilities are exactly those the fused kernel uses internally.
    """
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    q = attn.to_q(hidden_states)
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    k = attn.to_k(context)
    b, heads = q.shape[0], attn.heads
    q = q.view(b, -1, heads, q.shape[-1] // heads).transpose(1, 2)
    k = k.view(b, -1, heads, k.shape[-1] // heads).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    scores = (q @ k.transpose(-1, -2)) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], b)
        scores = scores + mask.view(b, heads, -1, mask.shape[-1])
    return scores.softmax(-1, dtype=torch.float32)  # one kernel: upcast inside the softmax (fp16/bf16 models)


def _side_at(latent_h: int, level: int) -> int:
    for _ in range(level):  # each downsampler: stride-2 conv with padding 1, so ceil(h / 2)
        latent_h = -(-latent_h // 2)
    return latent_h


def attention_levels(unet) -> list[int]:
    """UNet levels holding cross-attention (transformer) blocks. Down block i runs at level i, the mid block at the
    last level, up block j at level n-1-j (a UNet need not be symmetric)."""
    n = len(unet.down_blocks)
    blocks = [(i, b) for i, b in enumerate(unet.down_blocks)] + [(n - 1 - j, b) for j, b in enumerate(unet.up_blocks)]
    blocks.append((n - 1, unet.mid_block))
    return sorted({i for i, b in blocks if getattr(b, "has_cross_attention", False)})


def attention_sides(unet, latent_h: int) -> list[int]:
    """Heights of the grids attention runs on for a latent of height `latent_h`, finest first: the values
    `self_attention=[...]` can ask for."""
    return [_side_at(latent_h, level) for level in attention_levels(unet)]


def heatmap_side(unet, latent_h: int) -> int:
    """Height of the grid word heatmaps are built on (the finest with cross-attention, DAAM's latent grid) for a
    latent of height `latent_h`. Known before sampling, so `refine` can ask for that grid's self-attention."""
    levels = attention_levels(unet)
    return _side_at(latent_h, levels[0] if levels else len(unet.down_blocks) - 1)


def foldable(attn, hidden_states: torch.Tensor, attention_mask) -> bool:
    """Whether `folded_keys` gives this call's probabilities: plain ``nn.Linear`` projections (a LoRA or other
    wrapped projection changes the effective weight) whose weights sit on the activations' device (under accelerate's
    sequential CPU offload they are on ``meta`` outside their own forward, and reading them gives garbage), no norms
    between the projections and the product, no mask."""
    return (hidden_states.ndim == 3 and attention_mask is None and attn.group_norm is None and not attn.norm_cross
            and attn.norm_q is None and attn.norm_k is None
            and type(attn.to_q) is torch.nn.Linear and type(attn.to_k) is torch.nn.Linear
            and attn.to_q.weight.device == hidden_states.device == attn.to_k.weight.device)


def folded_keys(attn, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query projection folded into the keys, for ``scores = x @ M (+ c)``: (M (B, C, heads*T), c (B, 1, heads*T)).

    Per head h: (x W_h^T + b_h) K_h^T * scale = x (W_h^T K_h^T * scale) + b_h K_h^T * scale. The keys of a
    cross-attention layer are the text tokens, the same at every step of a sampling run, so M is computed once per
    run and each UNet call costs one batched matmul where `attention_probs` spends two projections, a transpose and
    a matmul: on a GPU the probe is bound by kernel launches, not arithmetic (benchmarks/probes_overhead.py).
    """
    k = attn.to_k(context)
    b, t, inner = k.shape
    heads = attn.heads
    w = attn.to_q.weight.float().view(heads, inner // heads, -1)  # (heads, d, C)
    k = k.float().view(b, t, heads, inner // heads) * attn.scale
    m = torch.einsum("bthd,hdc->bcht", k, w).reshape(b, w.shape[-1], heads * t)
    c = None
    if attn.to_q.bias is not None:
        c = torch.einsum("bthd,hd->bht", k, attn.to_q.bias.float().view(heads, -1)).reshape(b, 1, heads * t)
        c = c.to(context.dtype)
    return m.to(context.dtype), c


def folded_probs(hidden_states: torch.Tensor, m: torch.Tensor, c: torch.Tensor | None, heads: int) -> torch.Tensor:
    """softmax over tokens of ``x @ M (+ c)`` (see `folded_keys`): (B, heads, queries, tokens), float32.

    Equals `attention_probs` up to rounding (the sum runs in another order). The softmax runs on the contiguous
    query-major scores and the result is a head-major *view*: a transpose before it would cost a copy."""
    scores = torch.bmm(hidden_states, m) if c is None else torch.baddbmm(c, hidden_states, m)
    b, q, _ = scores.shape
    return scores.view(b, q, heads, -1).softmax(-1, dtype=torch.float32).transpose(1, 2)


def _token_spans(tokenizer, prompt: str, n_tokens: int) -> dict[tuple[str, str], tuple[int, ...]]:
    """{(part, word): token positions} covering all `n_tokens` context positions of `prompt`: the start token,
    each word (a repeated word is named ``word#k`` by its position k in the prompt), the end token, padding."""
    ids = tokenizer(prompt, truncation=True, max_length=n_tokens).input_ids
    has_end = bool(ids) and ids[-1] == tokenizer.eos_token_id
    spans = {("start", ""): (0,) if ids and ids[0] == tokenizer.bos_token_id else ()}
    wts = [wt for wt in word_tokens(tokenizer, prompt) if not wt.truncated]
    counts = Counter(wt.word for wt in wts)
    for wt in wts:
        spans[("word", wt.word if counts[wt.word] == 1 else f"{wt.word}#{wt.index}")] = wt.tokens
    spans[("end", "")] = (len(ids) - 1,) if has_end else ()
    spans[("padding", "")] = tuple(range(len(ids), n_tokens))
    return spans


class _Recorder:
    """Attention processor: delegate the output to `inner`, record the probabilities beside it."""

    def __init__(self, probe: "CrossAttentionProbe", layer: str, inner, cross: bool):
        self.probe, self.layer, self.inner, self.cross = probe, layer, inner, cross
        # `Attention.forward` passes on only the cross_attention_kwargs its processor's `__call__` names (it inspects
        # `processor.__call__`), so the recorder shows the wrapped processor's parameters (IP-Adapter's masks, a
        # custom processor's own arguments) or they would be dropped; calls still go through type(self).__call__.
        try:
            sig = inspect.signature(inner.__call__)
        except (TypeError, ValueError):  # an uninspectable processor: keep the recorder's own signature
            return
        self.__call__ = functools.partial(type(self).__call__, self)
        self.__call__.__signature__ = sig

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        self.probe._record(self.layer, attn, hidden_states, encoder_hidden_states if self.cross else None,
                           attention_mask, self.cross)
        return out


class _Buffer:
    """Running sums for one layer, keyed by (timestep bin, image, head): memory flat in steps."""

    def __init__(self, n_bins: int, probs: torch.Tensor, hw: tuple[int, int], mean_heads: bool):
        b, heads, q, k = probs.shape
        shape = (n_bins, b, 1 if mean_heads else heads, q, k)
        self.hw, self.mean_heads = hw, mean_heads
        self.total = torch.zeros(shape, device=probs.device, dtype=torch.float32)
        self.entropy = torch.zeros((n_bins, b, heads), device=probs.device, dtype=torch.float32)
        self.count = torch.zeros(n_bins, device=probs.device, dtype=torch.float32)
        self._one = torch.ones(1, device=probs.device)

    def add(self, bin_: torch.Tensor, probs: torch.Tensor) -> None:
        if probs.shape[0] != self.total.shape[1] or probs.shape[-1] != self.total.shape[-1]:
            raise ProbeError(f"attention batch changed from {tuple(self.total.shape[1:])} to "
                             f"{tuple(probs.shape)} within one recording; call probe.reset() between runs")
        self.entropy.index_add_(0, bin_, hm.token_entropy(probs, mean_queries=False)[None])
        if self.mean_heads:
            probs = probs.mean(1, keepdim=True)
        self.total.index_add_(0, bin_, probs[None])
        self.count.index_add_(0, bin_, self._one)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.total, self.entropy, self.count))

    def mean_entropy(self, bin_: int) -> torch.Tensor:
        """(images, heads) entropy over tokens, averaged over the bin's calls and the queries."""
        return self.entropy[bin_] / (self.count[bin_] * self.total.shape[3])


class CrossAttentionProbe(Probe):
    """Record cross-attention maps of every ``attn2`` (and optionally self-attention maps).

    ``with CrossAttentionProbe(pipe, n_images=len(prompts)) as probe: images = pipe(prompts).images``
    then ``probe.word_heatmaps(prompts, size)``, ``probe.table(prompts)``, ``probe.head_entropy()``.
    ``self_attention``: latent side lengths (e.g. ``[8]``) whose ``attn1`` maps to record as
    (bin, image, query, key) averaged over heads. ``mean_heads`` trades the per-head maps for memory.
    ``fold_keys`` (default) folds the query projection into the text keys once per run (`folded_keys`);
    ``False`` recomputes Q and K at every call (`attention_probs`), the reference the folded path is tested against.
    """

    name = "cross-attention"

    def __init__(self, model, *, n_images=None, timestep_bins=5, self_attention=(), mean_heads=False,
                 layers=None, tokenizer=None, fold_keys=True, **kw):
        super().__init__(model, n_images=n_images, timestep_bins=timestep_bins, **kw)
        self.fold_keys = fold_keys
        self.self_res = {int(r) for r in self_attention}
        self.mean_heads = mean_heads
        self.layer_filter = None if layers is None else list(layers)
        self.buffers: dict[str, _Buffer] = {}
        self.self_buffers: dict[str, _Buffer] = {}
        self._hw: dict[tuple, tuple[int, int]] = {}
        self._folded: dict[str, tuple] = {}  # layer -> (weakref to the text states, cache key, folded keys)
        self.tokenizer = tokenizer or getattr(self.pipe, "tokenizer", None)

    def _attach(self, unet):
        cross = find_modules(unet, is_cross_attention, "cross-attention modules (attn2)")
        if self.layer_filter is not None:
            missing = [p for p in self.layer_filter if p not in cross]
            if missing:
                raise ProbeError(f"no cross-attention module at {missing}; available: {list(cross)}")
            cross = {p: cross[p] for p in self.layer_filter}
        for path, mod in cross.items():
            self._processor(path, mod, lambda inner, p=path: _Recorder(self, p, inner, cross=True))
        if self.self_res:
            for path, mod in find_modules(unet, is_self_attention, "self-attention modules (attn1)").items():
                self._processor(path, mod, lambda inner, p=path: _Recorder(self, p, inner, cross=False))

    def _detach(self) -> None:
        super()._detach()
        self._folded.clear()  # holds the text states' folded keys, not needed once detached

    def refold(self) -> None:
        """Drop the folded keys so the next call refolds them: needed only after an edit through ``.data`` (PEFT's
        merge, EMA's ``copy_to``) to the projection weights or the text states, which no version counter sees."""
        self._folded.clear()

    def reset(self) -> None:
        self.buffers.clear()
        self.self_buffers.clear()
        self._folded.clear()
        self.fired = 0

    @torch.no_grad()
    def _record(self, layer, attn, hidden_states, context, attention_mask, cross: bool) -> None:
        rows = self.rows()
        n_q = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[-2] * hidden_states.shape[-1]
        hw = self._hw.get((self.ctx.latent_hw, n_q))
        if hw is None:  # cached: this runs for every layer at every call
            hw = self._hw[(self.ctx.latent_hw, n_q)] = resolution_chain(self.ctx.latent_hw, n_q)
        if not cross and hw[0] not in self.self_res:
            return  # self-attention at a resolution nobody asked for: the fused kernel alone ran
        if cross and self.fold_keys and foldable(attn, hidden_states, attention_mask):
            m, c = self._folded_keys(layer, attn, context, rows)
            probs = folded_probs(hidden_states[rows], m, c, attn.heads)
        else:
            mask = None if attention_mask is None else attention_mask[rows]
            probs = attention_probs(attn, hidden_states[rows], None if context is None else context[rows], mask)
        store = self.buffers if cross else self.self_buffers
        buf = store.get(layer)
        if buf is None:
            buf = store[layer] = _Buffer(self.n_bins, probs, hw, self.mean_heads or not cross)
        buf.add(self.ctx.bin, probs)
        self.fired += 1

    def _folded_keys(self, layer, attn, context, rows):
        """`folded_keys` of the conditional rows, cached per layer while the same text states (the same tensor,
        not modified in place) and the same projection weights come back: once per sampling run, not per step.
        Inference-mode tensors (text states, or weights made under `torch.inference_mode`) keep no version counter, so
        an in-place edit could not be seen: no cache for them. Edits through ``.data`` (PEFT's merge, EMA's
        ``copy_to``) bypass version counters too: `refold` after them."""
        params = (*attn.to_q.parameters(), *attn.to_k.parameters())
        if context.is_inference() or any(p.is_inference() for p in params):
            return folded_keys(attn, context[rows])
        key = (rows.start, rows.stop, context._version, *((p.data_ptr(), p._version) for p in params))
        hit = self._folded.get(layer)
        if hit is not None and hit[0]() is context and hit[1] == key:
            return hit[2]
        folded = folded_keys(attn, context[rows])
        self._folded[layer] = (weakref.ref(context), key, folded)
        return folded

    # -- read-out ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self.buffers)

    def resolution(self, layer: str) -> str:
        h, w = self.buffers[layer].hw
        return f"{h}x{w}"

    def maps(self, layer: str, bins=None) -> torch.Tensor:
        """Mean attention of `layer` over calls in `bins`: (images, heads, h, w, tokens)."""
        buf = self.buffers[layer]
        m = hm.mean_over_bins(buf.total, buf.count, bins)
        return m.view(m.shape[0], m.shape[1], *buf.hw, m.shape[-1])

    def self_attention_maps(self, layer: str, bins=None) -> torch.Tensor:
        """Mean self-attention of `layer`: (images, h*w queries, h*w keys), heads averaged."""
        buf = self.self_buffers[layer]
        return hm.mean_over_bins(buf.total, buf.count, bins)[:, 0]

    def memory_bytes(self) -> int:
        return sum(b.nbytes() for b in (*self.buffers.values(), *self.self_buffers.values()))

    def grids(self) -> list[tuple[int, int]]:
        """The distinct recorded (h, w) attention grids, finest first."""
        return sorted(dict.fromkeys(self.buffers[l].hw for l in self.layers), key=lambda hw: -hw[0] * hw[1])

    def finest_grid(self) -> tuple[int, int]:
        """The largest recorded (h, w): the common grid word heatmaps are built on (DAAM's latent grid)."""
        return self.grids()[0]

    def daam_layers(self) -> list[str]:
        """The recorded layers DAAM aggregates by default: all but the mid block's.

        DAAM's `UNetCrossAttentionLocator(locate_middle_block=False)` (daam/trace.py, daam/hook.py) hooks only the
        down and up blocks: the mid block's maps are the coarsest (8x8 in SD 1.x at 512 px, 4x4 in tiny_sd) and,
        upsampled to the image, spread every word over a large blob. A UNet with cross-attention only in its mid
        block keeps it.
        """
        out = [l for l in self.layers if not l.startswith("mid_block")]
        return out or self.layers

    def _select_layers(self, layers=None, resolution: str | None = None) -> list[str]:
        out = [l for l in self.layers if (layers is None or l in layers)
               and (resolution is None or self.resolution(l) == resolution)]
        if not out:
            raise ProbeError("no recorded cross-attention layer matches the selection "
                             f"(layers={layers}, resolution={resolution}); recorded: {self.layers}")
        return out

    def _tok(self, tokenizer):
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise ValueError("pass tokenizer= (the probe was attached to a bare UNet)")
        return tok

    def affinity(self, grid: tuple[int, int], bins=None) -> torch.Tensor:
        """Mean self-attention (images, h*w, h*w) over the recorded `attn1` layers on `grid` (heads, steps and layers
        averaged; rows still sum to 1): the affinity `word_heatmaps(refine=k)` propagates the maps through."""
        layers = [l for l, b in self.self_buffers.items() if b.hw == tuple(grid)]
        if not layers:
            raise ProbeError(f"refining heatmaps needs self-attention maps on their {grid[0]}x{grid[1]} grid: attach the "
                             f"probe with self_attention=[{grid[0]}] (recorded: "
                             f"{sorted({b.hw for b in self.self_buffers.values()}) or 'none'})")
        return torch.stack([self.self_attention_maps(l, bins) for l in layers]).mean(0)

    def word_heatmaps(self, prompts: list[str], size: tuple[int, int], tokenizer=None, layers=None,
                      resolution: str | None = None, bins=None, words=None, normalize: bool = False,
                      mid_block: bool = False, refine: int = 0) -> list[dict[str, np.ndarray]]:
        """[{word: (H, W) heatmap in [0, 1]}] per image, DAAM-style, for every word (or `words`).

        Images are ordered as the pipeline returns them (prompt-major when several per prompt).
        Layers: `layers` (paths) or one `resolution` (e.g. "8x8") when given; otherwise DAAM's default set, every
        recorded layer but the mid block's (`daam_layers`), or every layer with ``mid_block=True``.
        ``normalize``: DAAM's per-pixel normalisation over the prompt's word tokens (`heatmaps.word_heatmap`).
        ``refine=k``: propagate the maps k times through the self-attention on their grid (`heatmaps.propagate`;
        needs the probe attached with ``self_attention=[h]`` of that grid); 0, DAAM's recipe, by default.
        """
        tok = self._tok(tokenizer)
        if layers is None and resolution is None and not mid_block:
            layers = self.daam_layers()
        sel = self._select_layers(layers, resolution)
        per_layer = [self.maps(l, bins) for l in sel]
        n_img = per_layer[0].shape[0]
        if n_img % len(prompts):
            raise ValueError(f"{n_img} recorded images do not divide among {len(prompts)} prompts")
        per = n_img // len(prompts)
        grid = self.finest_grid()
        affinity = self.affinity(grid, bins) if refine else None
        out = []
        for i in range(n_img):
            prompt = prompts[i // per]
            wanted = words if words is not None else list(dict.fromkeys(wt.word for wt in word_tokens(tok, prompt)
                                                                      if not wt.truncated))
            content = tuple(t for v in word_index(tok, prompt).values() for t in v) if normalize else None
            heat = hm.words_heatmaps([m[i:i + 1] for m in per_layer], {w: resolve_word(tok, prompt, w) for w in wanted},
                                     size, per_pixel_over=content, grid=grid,
                                     affinity=None if affinity is None else affinity[i:i + 1], power=refine)
            out.append({w: h[0].cpu().numpy() for w, h in heat.items()})
        return out

    def _per_image(self, prompts: list[str]):
        """(layer, bin, lo, hi, image index, prompt, (1, heads, h, w, T) mean map) over recorded layers x bins x
        images; images are prompt-major, as the pipeline returns them."""
        for layer in self.layers:
            buf = self.buffers[layer]
            for b, lo, hi in self.bin_table():
                if float(buf.count[b]) == 0:
                    continue
                m = self.maps(layer, [b])
                per = m.shape[0] // len(prompts)
                for i in range(m.shape[0]):
                    yield layer, b, lo, hi, i, prompts[i // per], m[i:i + 1]

    def table(self, prompts: list[str], tokenizer=None) -> pd.DataFrame:
        """Tidy `maps.csv`: word x layer x timestep bin summaries (CONTRACTS.md), one block per image."""
        tok = self._tok(tokenizer)
        words_of = {p: [wt for wt in word_tokens(tok, p) if not wt.truncated] for p in set(prompts)}
        rows = []
        for layer, b, lo, hi, i, prompt, m in self._per_image(prompts):
            buf = self.buffers[layer]
            head_ent = float(buf.mean_entropy(b)[i].mean())
            for wt in words_of[prompt]:
                wm = hm.token_map(m, wt.tokens)  # (1, h, w) raw probability
                rows.append(dict(
                    word=wt.word, token_index=wt.tokens[0], layer=layer, resolution=self.resolution(layer),
                    t_bin=b, t_lo=lo, t_hi=hi, mean=float(wm.mean()), max=float(wm.max()),
                    entropy=float(hm.spatial_entropy(wm)[0]), image_index=i, word_index=wt.index,
                    n_tokens=len(wt.tokens), head_entropy=head_ent))
        return pd.DataFrame(rows)

    def token_mass(self, prompts: list[str], tokenizer=None) -> pd.DataFrame:
        """Tidy `token_mass.csv`: share of attention on the start token, each word, the end token and the
        padding, per image x layer x timestep bin (shares sum to 1). Most mass on padding, or shares close to
        uniform over tokens, mean the word heatmaps carry little signal (see docs/probes.md)."""
        tok = self._tok(tokenizer)
        if not self.layers:
            raise ProbeError("no cross-attention was recorded: run the pipeline inside `with probe:` first")
        spans_of = {p: _token_spans(tok, p, self.buffers[self.layers[0]].total.shape[-1]) for p in set(prompts)}
        rows = []
        for layer, b, lo, hi, i, prompt, m in self._per_image(prompts):
            spans = spans_of[prompt]
            for (part, word), share in hm.token_mass(m, spans).items():
                rows.append(dict(image_index=i, layer=layer, resolution=self.resolution(layer), t_bin=b, t_lo=lo,
                                 t_hi=hi, part=part, word=word, n_tokens=len(spans[(part, word)]),
                                 share=float(share[0])))
        return pd.DataFrame(rows)

    def head_entropy(self) -> pd.DataFrame:
        """Entropy over tokens (nats) per layer x head x timestep bin x image: low = a focused head."""
        rows = []
        for layer, buf in self.buffers.items():
            for b, lo, hi in self.bin_table():
                c = float(buf.count[b])
                if c == 0:
                    continue
                ent = buf.mean_entropy(b).cpu()
                for i in range(ent.shape[0]):
                    for h in range(ent.shape[1]):
                        rows.append(dict(layer=layer, resolution=self.resolution(layer), head=h, t_bin=b,
                                         t_lo=lo, t_hi=hi, image_index=i, entropy=float(ent[i, h])))
        return pd.DataFrame(rows)
