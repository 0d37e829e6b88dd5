"""Gradient attributions of the noise prediction with captum, to set beside attention heatmaps.

Attention says where a token's *value* is read; attributions say how much the prediction *depends* on
it. The scalar explained is the projection of eps(x_t, t, c) on its own (detached) direction,
<eps, eps_ref> / ||eps_ref||, i.e. the prediction's magnitude along what the model actually predicts.

* tokens: LayerIntegratedGradients (Sundararajan et al. 2017) on the text encoder's token embedding,
  from the empty prompt (start + end/padding tokens) to the prompt; summed over the embedding dim and
  over a word's tokens. IG's completeness axiom lets us report the convergence delta.
* layer: LayerGradientXActivation on the input of an up ResnetBlock2D, restricted to its skip half
  (the concatenated encoder features), summed over channels -> where in the image the prediction
  depends on that skip.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import heatmaps as hm
from .hooks import ProbeError, get_module
from .skips import skip_named, skip_pairs
from .words import word_tokens


def _token_embedding(text_encoder):
    try:
        return text_encoder.get_input_embeddings()
    except (AttributeError, NotImplementedError) as e:
        raise ProbeError(f"{type(text_encoder).__name__} exposes no token embedding to attribute to") from e


def _projection(eps: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    d = ref.flatten(1)
    return (eps.flatten(1) * d).sum(1) / d.norm(dim=1).clamp_min(1e-12)


def token_attributions(pipe, prompt: str, x_t: torch.Tensor, t: int, n_steps: int = 16,
                       internal_batch_size: int = 8) -> tuple[pd.DataFrame, float]:
    """Per-word IG attributions (word, word_index, token_index, n_tokens, attribution) and the IG delta."""
    from captum.attr import LayerIntegratedGradients

    if hasattr(pipe, "text_encoder_2"):
        raise ProbeError("token attributions support single-text-encoder pipelines (SD 1.x/2.x), not SDXL")
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    device = unet.device
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)
    base = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        ref = unet(x_t, t, encoder_hidden_states=te(ids)[0]).sample

    def forward(input_ids):
        k = input_ids.shape[0]
        eps = unet(x_t.expand(k, -1, -1, -1), t, encoder_hidden_states=te(input_ids)[0]).sample
        return _projection(eps, ref.expand(k, -1, -1, -1))

    lig = LayerIntegratedGradients(forward, _token_embedding(te))
    attr, delta = lig.attribute(ids, baselines=base, n_steps=n_steps, internal_batch_size=internal_batch_size,
                                return_convergence_delta=True)
    per_token = attr.sum(-1)[0].detach().cpu()
    rows = [dict(word=wt.word, word_index=wt.index, token_index=wt.tokens[0], n_tokens=len(wt.tokens),
                 attribution=float(per_token[list(wt.tokens)].sum()))
            for wt in word_tokens(tok, prompt) if not wt.truncated]
    return pd.DataFrame(rows), float(delta.abs().max())


def skip_attribution(pipe, x_t: torch.Tensor, t: int, cond: dict, skip_name: str | None = None,
                     size: tuple[int, int] | None = None) -> tuple[str, np.ndarray]:
    """Gradient x activation on one skip's features, summed over channels: (name, (H, W) map in [0, 1]).

    Default skip: the one feeding the last up resnet (highest resolution, FreeU's high-frequency path).
    """
    from captum.attr import LayerGradientXActivation

    unet = pipe.unet
    skip = skip_named(unet, skip_name) if skip_name else skip_pairs(unet)[-1]
    with torch.no_grad():
        ref = unet(x_t, t, **cond).sample

    def forward(x):
        return _projection(unet(x, t, **cond).sample, ref)

    lgxa = LayerGradientXActivation(forward, get_module(unet, skip.target))
    attr = lgxa.attribute(x_t.clone().requires_grad_(True), attribute_to_layer_input=True)
    attr = attr[0] if isinstance(attr, tuple) else attr
    spatial = attr[:, -skip.channels:].sum(1).abs().detach()  # (B, h, w)
    size = size or tuple(x_t.shape[-2:])
    return skip.name, hm.normalise(hm.upsample(spatial, size))[0].cpu().numpy()
