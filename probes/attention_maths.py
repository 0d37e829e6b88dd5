"""Attention probabilities of a diffusers `Attention` module, as pure functions of its weights and inputs.

Two paths give softmax(Q K^T / sqrt(d)) (Vaswani et al. 2017, Eq. 1): `attention_probs` recomputes Q and K like
`AttnProcessor2_0` does, the reference; `folded_keys` + `folded_probs` fold the query projection into the keys, per
head (x W_h^T + b_h) K_h^T * scale = x (W_h^T K_h^T * scale) + b_h K_h^T * scale. A cross-attention layer's keys are
the text tokens, the same at every step, so the fold runs once per sampling run and each UNet call costs one
batched matmul where the reference spends two projections, a transpose and a matmul: on a GPU the probe is bound by
kernel launches, not arithmetic (`benchmarks/probes_overhead.py`). `token_spans` names the key (token) positions.
"""

from __future__ import annotations

from collections import Counter

import torch

from .words import word_tokens


def attention_probs(attn, hidden_states: torch.Tensor, context: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale) of a diffusers `Attention` module, (B, heads, queries, keys), float32 (Vaswani et al.
    2017, Eq. 1). Mirrors `AttnProcessor2_0`'s pre-processing (group norm, cross-norm, q/k norms), so these are the
    probabilities its fused kernel uses."""
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


def foldable(attn, hidden_states: torch.Tensor, attention_mask) -> bool:
    """Whether `folded_keys` gives this call's probabilities: plain ``nn.Linear`` projections (a LoRA changes the
    effective weight) with weights on the activations' device (accelerate's sequential offload leaves them on
    ``meta`` outside their forward), no norms between the projections and the product, no mask."""
    return (hidden_states.ndim == 3 and attention_mask is None and attn.group_norm is None and not attn.norm_cross
            and attn.norm_q is None and attn.norm_k is None
            and type(attn.to_q) is torch.nn.Linear and type(attn.to_k) is torch.nn.Linear
            and attn.to_q.weight.device == hidden_states.device == attn.to_k.weight.device)


def folded_keys(attn, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query projection folded into the keys, for ``scores = x @ M (+ c)``: (M (B, C, heads*T), c (B, 1, heads*T)).
    Per head h: (x W_h^T + b_h) K_h^T * scale = x (W_h^T K_h^T * scale) + b_h K_h^T * scale."""
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
    """softmax over tokens of ``x @ M (+ c)`` (`folded_keys`): (B, heads, queries, tokens), float32, equal to
    `attention_probs` up to rounding. The softmax runs on the contiguous query-major scores and the result is a
    head-major *view*: a transpose before it would cost a copy."""
    scores = torch.bmm(hidden_states, m) if c is None else torch.baddbmm(c, hidden_states, m)
    b, q, _ = scores.shape
    return scores.view(b, q, heads, -1).softmax(-1, dtype=torch.float32).transpose(1, 2)


def token_spans(tokenizer, prompt: str, n_tokens: int) -> dict[tuple[str, str], tuple[int, ...]]:
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
