"""Token interventions in cross-attention: knock out, re-weight or swap a word's attention, per batch row, at chosen
layers and timestep bins (Prompt-to-Prompt, Hertz et al. 2022, Sec. 3.2; attention knockout as in Geva et al. 2023).

Edits act on the probabilities P = softmax(Q K^T / sqrt(d)) of an ``attn2`` before they weight the values:

- knockout: P[..., w] = 0 and every query's row renormalised to sum to 1 (the word is invisible);
- reweight: P[..., w] *= c, not renormalised (Prompt-to-Prompt's re-weighting, which scales the word's effect);
- swap: the key columns of two words exchanged (each query looks at word b where it looked at word a).

`TokenEdit` wraps each chosen layer's own processor (`attention_recording.WrappedProcessor`, restored exactly on
exit): the processor's output is computed as usual and only the rows whose plan names this layer and the current
bin are recomputed with edited probabilities, so every other row is the unedited run bit for bit.
"""

from __future__ import annotations

import torch

from .attention_maths import attention_probs
from .attention_recording import WrappedProcessor, is_cross_attention
from .hooks import Probe, ProbeError, find_sites, rows_per_bin

OPS = ("knockout", "reweight", "swap")


# --- the edits: small pure functions of P (B, heads, queries, keys); `keys` (B, keys) bool marks the word's tokens

def knockout(p: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    p = p.masked_fill(keys[:, None, None, :], 0.0)
    return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def reweight(p: torch.Tensor, keys: torch.Tensor, factor: float) -> torch.Tensor:
    return p * torch.where(keys, float(factor), 1.0)[:, None, None, :].to(p.dtype)


def swap(p: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`order` (B, keys) long: the key each column reads, a permutation exchanging the two words' tokens."""
    return p.gather(-1, order[:, None, None, :].expand_as(p))


def swap_order(n_keys: int, a: tuple[int, ...], b: tuple[int, ...]) -> torch.Tensor:
    """(n_keys,) permutation exchanging token positions `a` and `b` (equal lengths)."""
    if len(a) != len(b):
        raise ValueError(f"cannot swap words of {len(a)} and {len(b)} tokens")
    order = torch.arange(n_keys)
    order[list(a)], order[list(b)] = torch.tensor(b), torch.tensor(a)
    return order


def attend(attn, hidden_states: torch.Tensor, context: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The rest of an attention module's forward from given probabilities (diffusers' `AttnProcessor`): P V, the
    output projection, the residual and the rescale."""
    if getattr(attn, "spatial_norm", None) is not None:
        raise ProbeError("token edits do not support attention with a spatial norm")
    residual, ndim = hidden_states, hidden_states.ndim
    if ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    v = attn.to_v(context)
    b, heads = v.shape[0], attn.heads
    v = v.view(b, -1, heads, v.shape[-1] // heads).transpose(1, 2)
    out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, -1, v.shape[1] * v.shape[-1])
    out = attn.to_out[1](attn.to_out[0](out))
    if ndim == 4:
        out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class Edited(WrappedProcessor):
    """Processor of one edited layer: the inner output, with the planned rows recomputed under the edit."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.delegate(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs)
        self.probe.fired += 1
        rows = self.probe.rows_now(self.layer)
        if rows is None:
            return out
        if encoder_hidden_states is None:
            raise ProbeError(f"{self.layer} was called without text states: not a cross-attention call")
        at = self.probe.rows().start + rows.to(out.device)
        mask = None if attention_mask is None else attention_mask[at]
        probs = attention_probs(attn, hidden_states[at], encoder_hidden_states[at], mask)
        edited = self.probe.edit(probs, rows)
        out = out.clone()
        out[at] = attend(attn, hidden_states[at], encoder_hidden_states[at], edited).to(out.dtype)
        return out


class TokenEdit(Probe):
    """Edit the cross-attention of chosen tokens in the conditional rows that `plan` names.

    ``plan[layer]``: (n_bins, rows) bool; ``keys``: (rows, n_keys) bool, each row's word tokens (knockout,
    reweight) or ``order``: (rows, n_keys) long (swap); ``op`` in OPS, ``factor`` for reweight."""

    name = "token edit"

    def __init__(self, model, op: str, plan: dict[str, torch.Tensor], *, keys=None, order=None, factor: float = 1.0,
                 **kw):
        if op not in OPS:
            raise ProbeError(f"unknown token edit {op!r}; valid: {', '.join(OPS)}")
        n_rows = len(keys if op != "swap" else order)
        super().__init__(model, n_images=n_rows, **kw)
        self.op, self.factor = op, float(factor)
        self.keys = None if keys is None else torch.as_tensor(keys, dtype=torch.bool)
        self.order = None if order is None else torch.as_tensor(order, dtype=torch.long)
        self.plan = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in plan.items() if bool(torch.as_tensor(v).any())}
        self.rows_of = rows_per_bin(self.plan)
        self.bin = 0

    def _attach(self, unet):
        self._hook(unet, self._on_call, kind="pre", with_kwargs=True)
        cross = find_sites(unet, "attn2", "cross-attention modules (attn2)", is_cross_attention)
        missing = sorted(set(self.plan) - set(cross))
        if missing:
            raise ProbeError(f"no cross-attention module at {missing}")
        for path in self.plan:
            self._processor(path, cross[path], lambda inner, p=path: Edited(self, p, inner))

    def _on_call(self, module, args, kwargs):
        self.bin = int(self.ctx.bin)
        return None

    def rows_now(self, layer: str):
        return self.rows_of[layer][self.bin]

    def edit(self, probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.op == "swap":
            return swap(probs, self.order[rows].to(probs.device))
        keys = self.keys[rows].to(probs.device)
        if keys.shape[-1] != probs.shape[-1]:
            raise ProbeError(f"token masks have {keys.shape[-1]} positions, the attention has {probs.shape[-1]} keys")
        return knockout(probs, keys) if self.op == "knockout" else reweight(probs, keys, self.factor)
