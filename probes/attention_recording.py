"""The machinery `CrossAttentionProbe` records with: a wrapping attention processor, per-layer running sums, and
the per-run cache of folded text keys.

The processor wraps each attention module's own processor, so the UNet output is bit-identical to a run without
the probe and whatever processor was installed keeps working; the probabilities are computed beside it and summed
into a buffer per layer, so memory is flat in the number of steps (DAAM, Tang et al. 2023, stores every map).
"""

from __future__ import annotations

import functools
import inspect
import weakref

import torch

from . import heatmaps as hm
from .attention_maths import folded_keys
from .hooks import ProbeError


def is_cross_attention(module) -> bool:
    """An `attn2` site whose processor can be swapped and that attends to the text."""
    return hasattr(module, "set_processor") and getattr(module, "is_cross_attention", True)


def is_self_attention(module) -> bool:
    return hasattr(module, "set_processor")


class WrappedProcessor:
    """Base of the processors a probe installs around an attention module's own processor (`inner`), restored on
    exit by `Probe._detach`.

    `Attention.forward` passes on only the cross_attention_kwargs its processor's `__call__` names (it inspects
    `processor.__call__`), so the wrapper shows the wrapped processor's parameters (IP-Adapter's masks, a custom
    processor's own arguments) or they would be dropped; calls still go through type(self).__call__."""

    def __init__(self, probe, layer: str, inner):
        self.probe, self.layer, self.inner = probe, layer, inner
        try:
            sig = inspect.signature(inner.__call__)
        except (TypeError, ValueError):  # an uninspectable processor: keep the wrapper's own signature
            return
        self.__call__ = functools.partial(type(self).__call__, self)
        self.__call__.__signature__ = sig

    def delegate(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kwargs)


class Recorder(WrappedProcessor):
    """Attention processor: delegate the output to `inner`, hand the call's inputs to `probe._record` beside it."""

    def __init__(self, probe, layer: str, inner, cross: bool):
        super().__init__(probe, layer, inner)
        self.cross = cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        out = self.delegate(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        self.probe._record(self.layer, attn, hidden_states, encoder_hidden_states if self.cross else None,
                           attention_mask, self.cross)
        return out


class Buffer:
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


class FoldedKeyCache:
    """`folded_keys` of the conditional rows per layer, reused while the same text states (the same tensor, not
    modified in place) and the same projection weights come back: once per sampling run, not per step.

    Inference-mode tensors (text states, or weights made under `torch.inference_mode`) keep no version counter, so
    an in-place edit could not be seen: no cache for them. Edits through ``.data`` (PEFT's merge, EMA's
    ``copy_to``) bypass version counters too: `clear` after them.
    """

    def __init__(self):
        self._entries: dict[str, tuple] = {}  # layer -> (weakref to the text states, cache key, folded keys)

    def get(self, layer: str, attn, context: torch.Tensor, rows: slice):
        params = (*attn.to_q.parameters(), *attn.to_k.parameters())
        if context.is_inference() or any(p.is_inference() for p in params):
            return folded_keys(attn, context[rows])
        key = (rows.start, rows.stop, context._version, *((p.data_ptr(), p._version) for p in params))
        hit = self._entries.get(layer)
        if hit is not None and hit[0]() is context and hit[1] == key:
            return hit[2]
        folded = folded_keys(attn, context[rows])
        self._entries[layer] = (weakref.ref(context), key, folded)
        return folded

    def clear(self) -> None:
        self._entries.clear()
