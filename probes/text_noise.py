"""The corrupted run of causal tracing: Gaussian noise on a word's input token embeddings (Meng et al. 2022, Sec. 2.1;
Basu et al. 2024 corrupt the caption's attribute tokens in SD the same way).

A forward hook on each text encoder's token-embedding table adds nu ~ N(0, (k sigma)^2) at the word's positions,
sigma being the standard deviation of that table's entries (Meng et al. use k = 3), in the rows whose token ids
are the prompt's own, so the unconditional prompt that classifier-free guidance encodes beside it stays clean and
the corruption flows through the encoder (every later token, SDXL's pooled embedding) as the word itself would.
The noise is drawn once per (prompt, seed) on the CPU, so it is the same on every device and in every batch row.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .words import word_positions



def encoders(pipe) -> list[tuple[object, torch.nn.Module]]:
    """(tokenizer, text encoder) pairs of the pipeline (SDXL: both)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids[0]


def noise_for(prompt: str, seed: int, n_tokens: int, dim: int, scale: float, which: int) -> torch.Tensor:
    """(n_tokens, dim) noise of std `scale`, fixed by (prompt, seed, encoder index)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{which}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63 - 1))
    return torch.randn(n_tokens, dim, generator=g) * scale


@contextlib.contextmanager
def corrupted(pipe, words: dict[str, int], seed: int, k: float = 3.0):
    """Inside the block, encoding prompt p (a key of `words`) adds noise to the tokens of its word number words[p]
    (that occurrence only)."""
    handles = []
    try:
        for which, (tok, enc) in enumerate(encoders(pipe)):
            table = enc.get_input_embeddings()
            sigma = float(table.weight.detach().float().std())
            targets = []
            for prompt, index in words.items():
                pos = torch.tensor(word_positions(tok, prompt, index))
                nu = noise_for(prompt, seed, len(pos), table.weight.shape[1], k * sigma, which)
                targets.append((_ids(tok, prompt), pos, nu))

            def hook(module, args, out, targets=targets):
                ids = args[0]
                out = out.clone()
                for ref, pos, nu in targets:
                    if ids.shape[-1] != ref.shape[-1]:
                        continue
                    rows = (ids == ref.to(ids.device)).all(-1).nonzero().flatten()
                    for r in rows.tolist():
                        out[r, pos.to(out.device)] += nu.to(out.device, out.dtype)
                return out

            handles.append(table.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
