"""`CrossAttentionProbe`: cross-attention maps of every ``attn2``, aggregated on the device while sampling, and
their read-outs (per layer / timestep bin maps, DAAM word heatmaps, tidy tables).

Each call adds softmax(Q K^T / sqrt(d)) of the *conditional* rows (`attention_maths`) into a running sum of shape
(timestep bin, image, head, query, token) per layer (`attention_recording`). Self-attention keeps its fused SDPA;
its maps are recorded only at the resolutions asked for. Prompt-to-Prompt (Hertz et al. 2022) and DAAM (Tang et al.
2023) read the same quantity; the heatmap maths is in `heatmaps`, the tables in `attention_tables`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import attention_tables
from . import heatmaps as hm
from .attention_maths import attention_probs, foldable, folded_probs
from .attention_recording import Buffer, FoldedKeyCache, Recorder, is_cross_attention, is_self_attention
from .hooks import Probe, ProbeError, find_sites, resolution_chain
from .words import resolve_word, word_index, word_tokens


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
        self.buffers: dict[str, Buffer] = {}
        self.self_buffers: dict[str, Buffer] = {}
        self._hw: dict[tuple, tuple[int, int]] = {}
        self._folded = FoldedKeyCache()
        self.tokenizer = tokenizer or getattr(self.pipe, "tokenizer", None)

    def _attach(self, unet):
        cross = find_sites(unet, "attn2", "cross-attention modules (attn2)", is_cross_attention)
        if self.layer_filter is not None:
            missing = [p for p in self.layer_filter if p not in cross]
            if missing:
                raise ProbeError(f"no cross-attention module at {missing}; available: {list(cross)}")
            cross = {p: cross[p] for p in self.layer_filter}
        for path, mod in cross.items():
            self._processor(path, mod, lambda inner, p=path: Recorder(self, p, inner, cross=True))
        if self.self_res:
            for path, mod in find_sites(unet, "attn1", "self-attention modules (attn1)", is_self_attention).items():
                self._processor(path, mod, lambda inner, p=path: Recorder(self, p, inner, cross=False))

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
            m, c = self._folded.get(layer, attn, context, rows)
            probs = folded_probs(hidden_states[rows], m, c, attn.heads)
        else:
            mask = None if attention_mask is None else attention_mask[rows]
            probs = attention_probs(attn, hidden_states[rows], None if context is None else context[rows], mask)
        store = self.buffers if cross else self.self_buffers
        buf = store.get(layer)
        if buf is None:
            buf = store[layer] = Buffer(self.n_bins, probs, hw, self.mean_heads or not cross)
        buf.add(self.ctx.bin, probs)
        self.fired += 1

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

    def table(self, prompts: list[str], tokenizer=None) -> pd.DataFrame:
        """Tidy `maps.csv`: word x layer x timestep bin summaries (CONTRACTS.md), one block per image."""
        return attention_tables.maps_table(self, prompts, self._tok(tokenizer))

    def token_mass(self, prompts: list[str], tokenizer=None) -> pd.DataFrame:
        """Tidy `token_mass.csv`: share of attention on the start token, each word, the end token and the
        padding, per image x layer x timestep bin (shares sum to 1). Most mass on padding, or shares close to
        uniform over tokens, mean the word heatmaps carry little signal (see docs/probes.md)."""
        return attention_tables.token_mass_table(self, prompts, self._tok(tokenizer))

    def head_entropy(self) -> pd.DataFrame:
        """Entropy over tokens (nats) per layer x head x timestep bin x image: low = a focused head."""
        return attention_tables.head_entropy_table(self)
