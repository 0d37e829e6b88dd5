"""Gradient attributions of the noise prediction with captum, to set beside attention heatmaps.

Attention says where a token's *value* is read; attributions say how much the prediction *depends* on
it. The scalar explained is the projection of eps(x_t, t, c) on its own (detached) direction,
<eps, eps_ref> / ||eps_ref||, i.e. the prediction's magnitude along what the model actually predicts.

* tokens: LayerIntegratedGradients (Sundararajan et al. 2017) on the text encoder's token embedding,
  from the empty prompt (start + end/padding tokens) to the prompt; summed over the embedding dim and
  over a word's tokens. IG's completeness axiom lets us report the convergence delta. SDXL: both text encoders'
  token embeddings on one path, their attributions added per token.
* layer: LayerGradientXActivation on the input of an up ResnetBlock2D, restricted to its skip half
  (the concatenated encoder features), summed over channels -> where in the image the prediction
  depends on that skip.
"""

from __future__ import annotations

import warnings

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


def _ids(tok, text: str, device) -> torch.Tensor:
    return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device)


def sdxl_text_conditioning(pipe, ids: torch.Tensor, ids_2: torch.Tensor, height: int, width: int,
                           pool_at: int | None = None) -> dict:
    """`unet(x, t, **cond)` keyword arguments of SDXL from the two tokenizers' ids, as `encode_prompt` builds them
    (no clip_skip): both encoders' penultimate hidden states concatenated (768 + 1280 = 2048 in SDXL), the second
    encoder's projected pooled output as `text_embeds`, and the (original size, crop, target size) `time_ids`.
    ``pool_at``: read the pooled output at this token position instead of the end token of `ids_2`."""
    h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out2 = pipe.text_encoder_2(ids_2, output_hidden_states=True)
    embeds = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
    pooled = out2.text_embeds if pool_at is None else \
        pipe.text_encoder_2.text_projection(out2.last_hidden_state[:, pool_at])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=embeds.device, dtype=embeds.dtype)
    return dict(encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(ids.shape[0], 1)})


def _pooling_position(pipe, ids_2: torch.Tensor) -> int:
    """The position whose state CLIP pools into SDXL's `text_embeds` for `ids_2` (its end token), found by matching
    the encoder's own pooled output, so no pooling rule of a transformers version is copied here."""
    with torch.no_grad():
        out2 = pipe.text_encoder_2(ids_2)
        want = out2.text_embeds[0]
        cands = [pipe.text_encoder_2.text_projection(out2.last_hidden_state[:1, j])[0] for j in range(ids_2.shape[1])]
        hit = [j for j, c in enumerate(cands) if torch.equal(c, want)]
    if not hit:
        raise ProbeError("cannot find the token position SDXL's second text encoder pools its text_embeds from")
    return hit[0]


def token_attributions(pipe, prompt: str, x_t: torch.Tensor, t: int, n_steps: int = 16,
                       internal_batch_size: int = 8) -> tuple[pd.DataFrame, float]:
    """Per-word IG attributions (word, word_index, token_index, n_tokens, attribution) and the IG delta.

    SD 1.x/2.x: IG on the text encoder's token embedding. SDXL: on both encoders' token embeddings at once (one
    path from the empty prompt to the prompt through both, so completeness holds for their sum); a token's
    attribution is the sum over the two encoders (their tokenizers place the words at the same positions). SDXL's
    pooled `text_embeds` is the second encoder's state at the end token, a position the *ids* choose, not the
    embeddings IG interpolates: captum runs the whole path with the prompt's ids, so it is read at the prompt's end
    position all along, the baseline's value included (else the path would not start at the baseline and the
    reported delta would be that mismatch, not IG's error)."""
    from captum.attr import LayerIntegratedGradients

    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    device = unet.device
    sdxl = hasattr(pipe, "text_encoder_2")
    ids, base = _ids(tok, prompt, device), _ids(tok, "", device)
    if sdxl:
        tok2 = pipe.tokenizer_2
        ids_2, base_2 = _ids(tok2, prompt, device), _ids(tok2, "", device)
        if ids_2.shape != ids.shape:
            raise ProbeError(f"SDXL's two tokenizers give {ids.shape[1]} and {ids_2.shape[1]} positions: token "
                             "attributions add the two encoders' per position and need the same context length")
        h, w = (s * pipe.vae_scale_factor for s in x_t.shape[-2:])
        pool_at = _pooling_position(pipe, ids_2)
        cond_of = lambda a, b: sdxl_text_conditioning(pipe, a, b, h, w, pool_at)  # noqa: E731
        inputs, baselines = (ids, ids_2), (base, base_2)
        layers = [_token_embedding(te), _token_embedding(pipe.text_encoder_2)]
    else:
        cond_of = lambda a: dict(encoder_hidden_states=te(a)[0])  # noqa: E731
        inputs, baselines, layers = ids, base, _token_embedding(te)
    with torch.no_grad():
        ref = unet(x_t, t, **cond_of(*((ids, ids_2) if sdxl else (ids,)))).sample

    def forward(*input_ids):
        k = input_ids[0].shape[0]
        eps = unet(x_t.expand(k, -1, -1, -1), t, **cond_of(*input_ids)).sample
        return _projection(eps, ref.expand(k, -1, -1, -1))

    with warnings.catch_warnings():  # captum warns on every list of layers; the two encoders do not feed each other
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        lig = LayerIntegratedGradients(forward, layers)
    attr, delta = lig.attribute(inputs, baselines=baselines, n_steps=n_steps, internal_batch_size=internal_batch_size,
                                return_convergence_delta=True)
    per_token = sum(a.sum(-1)[0] for a in attr) if sdxl else attr.sum(-1)[0]
    per_token = per_token.detach().cpu()
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

    lgxa = LayerGradientXActivation(forward, get_module(unet, skip.path))
    attr = lgxa.attribute(x_t.clone().requires_grad_(True), attribute_to_layer_input=True)
    attr = attr[0] if isinstance(attr, tuple) else attr
    spatial = attr[:, -skip.channels:].sum(1).abs().detach()  # (B, h, w)
    size = size or tuple(x_t.shape[-2:])
    return skip.name, hm.normalise(hm.upsample(spatial, size))[0].cpu().numpy()
