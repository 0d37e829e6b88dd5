"""Probes on random tiny pipelines: correctness of the maps, restore guarantees, CFG/batch/size handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes import (CrossAttentionProbe, ProbeError, SkipIntervention, SkipProbe, TembIntervention, TimestepProbe,
                    attached, hooks_left, processors, skip_pairs, word_tokens)
from probes import heatmaps as hm
from probes import inputs
from probes.attention_maths import attention_probs, foldable, folded_keys, folded_probs
from probes.hooks import conditional_rows, resolution_chain
from probes.words import resolve_word

PROMPTS = ["a red circle left of a blue square", "a green triangle"]


def _run(pipe, prompts, steps=2, guidance=7.5, **kw):
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0), **kw).images


# ------------------------------------------------------------------------------ maps are correct
def test_recorded_rows_sum_to_one_and_output_unchanged(pipe):
    bare = _run(pipe, PROMPTS)
    with CrossAttentionProbe(pipe, n_images=2) as probe:
        probed = _run(pipe, PROMPTS)
    np.testing.assert_array_equal(bare, probed)  # the probe only reads
    assert len(probe.layers) == 11  # every attn2 of the SD1.x layout (2+2+1+3+3)
    for layer in probe.layers:
        m = probe.maps(layer)
        assert m.shape[0] == 2  # conditional half only: 2 images, not 4 batch rows
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5, rtol=0)


def test_cross_attention_kwargs_still_reach_the_wrapped_processor(pipe):
    """diffusers passes on only the cross_attention_kwargs a processor's __call__ names; the recorder must name
    those of the processor it wraps (IP-Adapter masks, custom processors) or it silently changes the output."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Gain(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, gain=1.0, **kw):
            return gain * super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)

    unet = pipe.unet
    before = dict(unet.attn_processors)
    unet.set_attn_processor({p: Gain() if p.endswith("attn2.processor") else q for p, q in before.items()})
    try:
        x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 16, unet.config.cross_attention_dim)
        with torch.no_grad():
            bare = unet(x, 500, ctx, cross_attention_kwargs={"gain": 0.0}).sample
            with CrossAttentionProbe(unet, n_images=1) as probe:
                probed = unet(x, 500, ctx, cross_attention_kwargs={"gain": 0.0}).sample
            plain = unet(x, 500, ctx).sample
    finally:
        unet.set_attn_processor(before)
    assert not torch.allclose(bare, plain)  # the kwarg does something
    torch.testing.assert_close(probed, bare, rtol=0, atol=0)
    assert len(probe.layers) == 11


def test_attention_probs_match_the_fused_kernel(pipe):
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    x, ctx = torch.randn(2, 64, 64), torch.randn(2, 77, 64)
    probs = attention_probs(attn, x, ctx)
    v = attn.to_v(ctx).view(2, 77, attn.heads, -1).transpose(1, 2)
    ours = (probs @ v).transpose(1, 2).reshape(2, 64, -1)
    q = attn.to_q(x).view(2, 64, attn.heads, -1).transpose(1, 2)
    k = attn.to_k(ctx).view(2, 77, attn.heads, -1).transpose(1, 2)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 64, -1)
    torch.testing.assert_close(ours, fused, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("q_bias", [False, True])
def test_folded_keys_give_the_same_probabilities(q_bias):
    """x (W_q^T K^T) (+ b_q K^T) is softmax(QK^T)'s argument with the query projection folded into the keys."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(48, cross_attention_dim=24, heads=3, dim_head=16, bias=q_bias).eval()
    x, ctx = torch.randn(2, 20, 48), torch.randn(2, 7, 24)
    assert foldable(attn, x, None)
    with torch.no_grad():
        got = folded_probs(x, *folded_keys(attn, ctx), attn.heads)
        want = attention_probs(attn, x, ctx)
    assert got.shape == want.shape == (2, 3, 20, 7)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_folded_keys_in_half_precision_are_no_less_accurate(dtype):
    """fp16/bf16 models (GPU): the fold (M computed in fp32, then cast) must not lose accuracy against an fp64
    reference compared with recomputing Q and K in the model's dtype (SD1.5's 320-channel, 8-head, 77-token layer)."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(320, cross_attention_dim=768, heads=8, dim_head=40).eval()
    x, ctx = torch.randn(2, 64, 320), torch.randn(2, 77, 768)
    with torch.no_grad():
        ref = attention_probs(attn.double(), x.double(), ctx.double())
        half, xh, ch = attn.to(dtype), x.to(dtype), ctx.to(dtype)
        plain = (attention_probs(half, xh, ch).double() - ref).abs().max()
        folded = (folded_probs(xh, *folded_keys(half, ch), half.heads).double() - ref).abs().max()
    assert folded <= 1.5 * plain, (float(folded), float(plain))


def test_folded_path_only_where_it_is_exact(pipe):
    """A mask, a norm before the projections or a wrapped projection (LoRA: another effective weight) take the
    plain path."""
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    x = torch.randn(1, 64, attn.to_q.in_features)
    assert foldable(attn, x, None)
    assert not foldable(attn, x, torch.zeros(1, 1, 16))
    assert not foldable(attn, x.transpose(1, 2).reshape(1, -1, 8, 8), None)
    wrapped = type("LoraLike", (torch.nn.Linear,), {})(attn.to_q.in_features, attn.to_q.out_features, bias=False)
    offloaded = torch.nn.Linear(attn.to_q.in_features, attn.to_q.out_features, bias=False, device="meta")
    plain = attn.to_q
    try:
        for other in (wrapped, offloaded):  # a LoRA-like subclass; a weight parked on `meta` (sequential offload)
            attn.to_q = other
            assert not foldable(attn, x, None)
    finally:
        attn.to_q = plain


def _fold_matches_plain(unet, calls, mode=torch.no_grad, n_layers=11):
    """Record `calls(probe)` with the folded keys and with Q and K recomputed, both under `mode`: the maps must agree.
    `calls` makes its own inputs, inside `mode` (inference tensors must be born there)."""
    maps = {}
    for fold_keys in (True, False):
        with mode(), CrossAttentionProbe(unet, n_images=1, timestep_bins=1, fold_keys=fold_keys) as probe:
            calls(probe)
        maps[fold_keys] = {l: probe.maps(l) for l in probe.layers}
    assert maps[True].keys() == maps[False].keys() and len(maps[True]) == n_layers
    for layer, m in maps[True].items():
        torch.testing.assert_close(m, maps[False][layer], atol=1e-5, rtol=1e-4)


def test_folded_keys_are_refreshed_when_text_or_weights_change(pipe):
    """The cached folded keys follow a new text tensor, an in-place edit of it and an in-place weight update; the
    recorded maps equal those of the plain path throughout."""
    unet = pipe.unet
    dim = unet.config.cross_attention_dim
    x, ctx_a, ctx_b = torch.randn(1, 4, 16, 16), torch.randn(1, 16, dim), torch.randn(1, 16, dim)
    weight = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_q.weight
    w0 = weight.detach().clone()

    def edits(probe):
        ctx = ctx_a.clone()
        try:
            unet(x, 500, ctx)
            unet(x, 400, ctx)  # cache hit
            unet(x, 300, ctx_b)  # another text tensor
            ctx.mul_(2.0)  # the same tensor edited in place
            unet(x, 200, ctx)
            weight.mul_(1.5)  # a weight updated in place (an optimiser step)
            unet(x, 100, ctx)
        finally:
            weight.copy_(w0)

    def data_edit(probe):  # an edit through .data bumps no version counter: refold() is the documented remedy
        try:
            unet(x, 500, ctx_a)
            weight.data.mul_(1.5)
            probe.refold()
            unet(x, 400, ctx_a)
        finally:
            weight.copy_(w0)

    _fold_matches_plain(unet, edits)
    _fold_matches_plain(unet, data_edit)


def test_folded_path_under_inference_mode(pipe):
    """Inference tensors keep no version counter (reading it raises): the folded keys are recomputed, not cached."""
    unet = pipe.unet

    def calls(probe):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 16, 16, generator=g)  # made here: inference tensors, as a pipeline's text states are
        ctx = torch.randn(1, 16, unet.config.cross_attention_dim, generator=g)
        assert ctx.is_inference()
        unet(x, 500, ctx)
        unet(x, 400, ctx)

    _fold_matches_plain(unet, calls, mode=torch.inference_mode)


def test_folded_path_with_weights_made_under_inference_mode(pipe):
    """Weights copied under inference mode are inference tensors (no version counter), used later under no_grad."""
    import copy

    with torch.inference_mode():
        unet = copy.deepcopy(pipe.unet)
    assert next(unet.parameters()).is_inference()
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 16, unet.config.cross_attention_dim)

    def calls(probe):
        unet(x, 500, ctx)
        unet(x, 400, ctx)

    _fold_matches_plain(unet, calls)


def test_head_entropy_is_the_mean_entropy_of_the_rows(pipe):
    """One call per timestep bin: the recorded map is that call's attention, so the head entropy must equal the
    entropy of its rows over tokens, averaged over the queries (the probe sums, and divides when it reads out)."""
    unet = pipe.unet
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 16, unet.config.cross_attention_dim)
    with torch.no_grad(), CrossAttentionProbe(unet, n_images=1, timestep_bins=2) as probe:
        unet(x, 900, ctx)
        unet(x, 100, ctx)
    single = {(l, b): probe.maps(l, [b])[0] for l in probe.layers for b in (0, 1)}  # (heads, h, w, T) of one call
    table = probe.head_entropy()
    for (layer, t_bin), got in table.groupby(["layer", "t_bin"]):
        want = torch.special.entr(single[layer, t_bin]).sum(-1).flatten(1).mean(1)
        np.testing.assert_allclose(got.sort_values("head")["entropy"].to_numpy(), want.numpy(), rtol=1e-5)
    assert len(table) == 2 * sum(probe.maps(l).shape[1] for l in probe.layers)  # every layer x head x bin
    # two calls in one bin: the mean of the two calls' entropies (not the entropy of the mean map)
    x2 = torch.randn(1, 4, 16, 16)
    with torch.no_grad(), CrossAttentionProbe(unet, n_images=1, timestep_bins=1) as probe:
        unet(x, 900, ctx)
        unet(x2, 100, ctx)
    with torch.no_grad(), CrossAttentionProbe(unet, n_images=1, timestep_bins=1) as second:
        unet(x2, 100, ctx)
    table = probe.head_entropy()
    for layer, got in table.groupby("layer"):
        per_call = [torch.special.entr(m).sum(-1).flatten(1).mean(1) for m in (single[layer, 1], second.maps(layer)[0])]
        np.testing.assert_allclose(got.sort_values("head")["entropy"].to_numpy(), ((per_call[0] + per_call[1]) / 2).numpy(),
                                   rtol=1e-5)


def test_word_map_of_hand_built_attention_is_the_mask():
    h = w = 8
    mask = np.zeros((h, w), bool)
    mask[2:5, 1:6] = True
    attn = torch.full((1, 2, h, w, 5), 0.1)
    attn[..., 3] = torch.as_tensor(mask, dtype=torch.float32) * 0.5  # word = tokens 3 and 4
    attn[..., 4] = torch.as_tensor(mask, dtype=torch.float32) * 0.2
    heat = hm.word_heatmap([attn, attn.clone()], (3, 4), (h, w))[0].numpy()
    np.testing.assert_array_equal(heat > 0.4, mask)
    assert heat.max() == pytest.approx(1.0) and heat.min() == pytest.approx(0.0)
    up = hm.word_heatmap([attn], (3,), (32, 32))[0]  # bicubic upsampling keeps the region
    assert up.shape == (32, 32) and float(up[14, 14]) > 0.8 and float(up[30, 30]) < 0.1


def test_self_attention_propagation_snaps_a_blurred_map_to_the_object():
    """Pixels that attend only within their own region (object / background) average the map over that region: a
    blob spilling half its mass onto the surround becomes the object's mask after one step (Dataset Diffusion's S^k A)."""
    h = w = 4
    obj = torch.zeros(h, w, dtype=torch.bool)
    obj[:2, :2] = True
    flat = obj.flatten()
    same = (flat[:, None] == flat[None, :]).float()
    affinity = (same / same.sum(1, keepdim=True))[None]  # (1, 16, 16), rows sum to 1
    blob = obj.float().clone()
    blob[:3, :3] = torch.maximum(blob[:3, :3], torch.tensor(0.5))  # spills onto the surround
    maps = blob[None, None]
    assert ((hm.normalise(blob[None])[0] > 0.4) != obj).any()  # thresholded, the blob is wider than the object
    out = hm.propagate(maps, affinity, 1)[0, 0]
    np.testing.assert_array_equal((hm.normalise(out[None])[0] > 0.4).numpy(), obj.numpy())
    torch.testing.assert_close(out[obj], torch.ones(4))  # mass is averaged, not created
    torch.testing.assert_close(hm.propagate(maps, affinity, 0), maps)
    with pytest.raises(ValueError, match="8x2 grid"):
        hm.propagate(maps.reshape(1, 1, 8, 2)[:, :, :8], affinity[:, :15, :15], 1)
    with pytest.raises(ValueError, match=">= 0"):
        hm.propagate(maps, affinity, -1)


def test_refined_heatmaps_need_self_attention_on_their_grid(pipe):
    with CrossAttentionProbe(pipe, n_images=1) as probe:
        _run(pipe, PROMPTS[:1])
    h, w = probe.finest_grid()
    with pytest.raises(ProbeError, match=rf"self_attention=\[{h}\]"):
        probe.word_heatmaps(PROMPTS[:1], (32, 32), refine=1)
    with CrossAttentionProbe(pipe, n_images=1, self_attention=[h]) as probe:
        _run(pipe, PROMPTS[:1])
    plain = probe.word_heatmaps(PROMPTS[:1], (32, 32))[0]
    assert probe.word_heatmaps(PROMPTS[:1], (32, 32), refine=0)[0].keys() == plain.keys()
    refined = probe.word_heatmaps(PROMPTS[:1], (32, 32), refine=2)[0]
    assert refined.keys() == plain.keys()
    a = probe.affinity((h, w))
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]), atol=1e-5, rtol=0)
    for word, heat in refined.items():
        assert heat.shape == (32, 32) and np.isfinite(heat).all()
        assert heat.min() == pytest.approx(0.0, abs=1e-6) and heat.max() > 0.99  # min-max normalised (eps)
        assert not np.allclose(heat, plain[word])  # the propagation did something


def test_word_heatmap_passes_eps_on():
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(1, 2, 6, 6, 5, generator=g)
    attn = attn / attn.sum(-1, keepdim=True)
    got = hm.word_heatmap([attn], (2,), (6, 6), per_pixel_over=(1, 2, 3), eps=100.0)
    want = hm.words_heatmaps([attn], {"w": (2,)}, (6, 6), per_pixel_over=(1, 2, 3), eps=100.0)["w"]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, hm.word_heatmap([attn], (2,), (6, 6), per_pixel_over=(1, 2, 3)))


def test_per_pixel_word_normalisation_is_the_word_share():
    """DAAM's normalize=True: each pixel's map is the word's share of the attention on the prompt's words."""
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(1, 2, 6, 6, 5, generator=g)
    attn = attn / attn.sum(-1, keepdim=True)
    got = hm.word_heatmap([attn, attn], (2,), (6, 6), per_pixel_over=(1, 2, 3))
    a = attn.mean(1)  # (1, h, w, T), heads averaged
    share = a[..., 2] / (a[..., 1:4].sum(-1) + 1e-6)
    torch.testing.assert_close(got, hm.normalise(share))
    # a start-token sink that varies over the image leaves the normalised map untouched
    sink = attn.clone()
    sink[..., 0] += torch.linspace(0, 5, 6)[None, None, :, None]
    sink = sink / sink.sum(-1, keepdim=True)
    torch.testing.assert_close(hm.word_heatmap([sink], (2,), (6, 6), per_pixel_over=(1, 2, 3)),
                               hm.word_heatmap([attn], (2,), (6, 6), per_pixel_over=(1, 2, 3)), atol=1e-4, rtol=0)


def _daam_reference(layers, tokens, grid, size):
    """DAAM's code path, transcribed loop by loop (daam/trace.py compute_global_heat_map, heatmap.py expand_as):
    a dict of (layer, head) maps, each interpolated to the latent grid and clamped, stacked and averaged."""
    raw = {(li, hd): a[0, hd].permute(2, 0, 1) for li, a in enumerate(layers) for hd in range(a.shape[1])}
    merges = [torch.nn.functional.interpolate(m.unsqueeze(1), size=grid, mode="bicubic").clamp_(min=0)
              for m in raw.values()]
    maps = torch.stack(merges, 0).mean(0)[:, 0]  # (tokens, *grid)
    word = maps[list(tokens)].mean(0)
    im = torch.nn.functional.interpolate(word[None, None], size=size, mode="bicubic")
    return ((im - im.min()) / (im.max() - im.min() + 1e-8))[0]


def test_word_heatmap_follows_daams_code():
    """Layers of different grids and head counts (as tiny_sd's 16x16 x 1 head and 8x8 x 2 heads): every head weighs
    the same, each is brought to the latent grid and clamped on its own, and a multi-token word is its tokens' mean."""
    g = torch.Generator().manual_seed(0)
    fine = torch.rand(1, 1, 16, 16, 6, generator=g) ** 4  # peaky, so bicubic undershoots and the clamp matters
    coarse = torch.rand(1, 2, 8, 8, 6, generator=g) ** 4
    want = _daam_reference([fine, coarse], (2, 3), (16, 16), (64, 64))
    got = hm.word_heatmap([fine, coarse], (2, 3), (64, 64))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a coarse layer alone is still brought to the common grid first when the probe passes it
    torch.testing.assert_close(hm.word_heatmap([coarse], (2, 3), (64, 64), grid=(16, 16)),
                               _daam_reference([coarse], (2, 3), (16, 16), (64, 64)), atol=1e-5, rtol=0)
    # weighting layers (not heads) equally gives a different map: the test can tell the two apart
    per_layer = hm.word_heatmap([fine, coarse.mean(1, keepdim=True)], (2, 3), (64, 64))
    assert (per_layer - got).abs().max() > 1e-2


def test_reference_heatmaps_floor_and_ceiling():
    """Uniform map: IoU = the object's share of the image. Truth through a grid: near 1 when the object fills whole
    cells, lower for a coarse grid, and never above 1."""
    from probes import evaluation
    mask = np.zeros((64, 64), bool)
    mask[16:32, 8:32] = True  # 16 x 24 px: whole 4-px cells of a 16x16 grid, half cells of a 4x4 grid
    refs = evaluation.reference_heatmaps({"square": mask}, [(16, 16), (4, 4)])
    uni = evaluation.score(refs[evaluation.UNIFORM], {"square": mask}, [0.4])[0]
    assert uni["iou"] == pytest.approx(mask.mean())
    # a map wider than the object keeps recall and loses precision (DAAM's intersection over the predicted area)
    assert uni["recall"] == 1.0 and uni["precision"] == pytest.approx(mask.mean())
    shifted = evaluation.score({"square": np.roll(mask, 12, axis=1).astype(float)}, {"square": mask}, [0.4])[0]
    assert shifted["precision"] == pytest.approx(0.5) and shifted["recall"] == pytest.approx(0.5)
    # an empty prediction scores 0 on all three (DAAM's compute_ioa), so precision averages over the rows IoU does
    empty = evaluation.score({"square": np.zeros(mask.shape)}, {"square": mask}, [0.4])[0]
    assert (empty["iou"], empty["precision"], empty["recall"]) == (0.0, 0.0, 0.0)
    iou_fine = evaluation.score(refs[evaluation.CEILING.format(res="16x16")], {"square": mask}, [0.4])[0]["iou"]
    iou_coarse = evaluation.score(refs[evaluation.CEILING.format(res="4x4")], {"square": mask}, [0.4])[0]["iou"]
    assert 0.9 < iou_fine <= 1.0 and iou_coarse < iou_fine
    assert list(refs) == [evaluation.UNIFORM, evaluation.CEILING.format(res="16x16"), evaluation.CEILING.format(res="4x4")]


def test_auroc_tells_inverted_maps_from_diffuse_ones():
    """AUROC is threshold-free and sign-aware: 1 for the mask itself, 0 for its negative, 0.5 for a uniform map --
    where IoU at tau 0.4 scores the inverted and the uniform map alike (both miss or cover everything)."""
    from probes import evaluation
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:20] = True
    assert evaluation.auroc(mask.astype(float), mask) == pytest.approx(1.0)
    assert evaluation.auroc(1.0 - mask, mask) == pytest.approx(0.0)
    assert evaluation.auroc(np.ones((32, 32)), mask) == pytest.approx(0.5)
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))  # hotter to the right: region cols 8-19 sit left of centre
    want = np.mean([(ramp[~mask][None] < v).mean() + 0.5 * (ramp[~mask][None] == v).mean() for v in ramp[mask]])
    assert evaluation.auroc(ramp, mask) == pytest.approx(want, abs=1e-4)
    assert np.isnan(evaluation.auroc(ramp, np.zeros_like(mask))) and np.isnan(evaluation.auroc(ramp, np.ones_like(mask)))
    rows = evaluation.score({"square": 1.0 - mask}, {"square": mask}, [0.4, 0.6])
    assert [r["auroc"] for r in rows] == pytest.approx([0.0, 0.0])
    assert [r["precision"] for r in rows] == [0.0, 0.0] and [r["recall"] for r in rows] == [0.0, 0.0]
    assert [r["area"] for r in rows] == pytest.approx([mask.mean()] * 2)


def test_miou_by_object_area_bins_the_headline_rows():
    """Quartiles of the region's area, per source and word type, from the chosen breakdown and tau only."""
    import pandas as pd
    from probes import evaluation
    areas = np.linspace(0.01, 0.2, 8)
    rows = pd.DataFrame([dict(source="generated", breakdown=b, word_type="shape", tau=tau, iou=a * 3, auroc=0.9,
                              precision=a * 2, recall=1 - a, area=a)
                         for a in areas for b in ("all", "layer=x") for tau in (0.4, 0.6)])
    out = evaluation.by_area(rows, n_bins=4, n_boot=200)
    assert len(out) == 4 and (out["n"] == 2).all() and (out["breakdown"] == "all").all()
    assert out["miou"].to_numpy() == pytest.approx([3 * areas[2 * k: 2 * k + 2].mean() for k in range(4)])
    assert out["precision"].to_numpy() == pytest.approx([2 * areas[2 * k: 2 * k + 2].mean() for k in range(4)])
    assert out["recall"].to_numpy() == pytest.approx([1 - areas[2 * k: 2 * k + 2].mean() for k in range(4)])
    assert out["area_lo"].is_monotonic_increasing and (out["area_lo"] < out["area_hi"]).all()


def test_token_mass_of_hand_built_attention():
    attn = torch.zeros(2, 3, 4, 4, 6)
    attn[0, ..., 0], attn[0, ..., 2], attn[0, ..., 5] = 0.5, 0.3, 0.2
    attn[1, ..., 1] = 1.0
    m = hm.token_mass(attn, {"start": (0,), "word": (1, 2), "pad": (3, 4, 5), "none": ()})
    torch.testing.assert_close(m["start"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(m["word"], torch.tensor([0.3, 1.0]))
    torch.testing.assert_close(m["pad"], torch.tensor([0.2, 0.0]))
    torch.testing.assert_close(m["none"], torch.tensor([0.0, 0.0]))


def test_token_mass_table_covers_every_token(pipe):
    prompts = ["a red circle left of a blue square", "a green triangle"]
    with CrossAttentionProbe(pipe, n_images=2, timestep_bins=2) as probe:
        _run(pipe, prompts)
    t = probe.token_mass(prompts)
    sums = t.groupby(["image_index", "layer", "t_bin"])["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    img0 = t[(t.image_index == 0) & (t.layer == probe.layers[0]) & (t.t_bin == t.t_bin.min())]
    assert list(img0.part) == ["start"] + ["word"] * 8 + ["end", "padding"]
    assert {"a#0", "a#5", "red", "square"} <= set(img0.word)  # the repeated "a" is kept apart by position
    assert img0.n_tokens.sum() == pipe.tokenizer.model_max_length
    with pytest.raises(ProbeError, match="no cross-attention was recorded"):
        CrossAttentionProbe(pipe, n_images=2).token_mass(prompts)


def test_multi_token_words_and_token_limit(pipe):
    tok = pipe.tokenizer
    wts = word_tokens(tok, "a reddish circle")
    assert [wt.word for wt in wts] == ["a", "reddish", "circle"]
    assert len(wts[1].tokens) > 1 and wts[2].tokens[0] == wts[1].tokens[-1] + 1
    n = tok.model_max_length - 2  # content tokens between the start and end tokens
    long = " ".join(["a red circle"] * n)  # 3n one-token words, far past the context
    wts = word_tokens(tok, long)
    assert not wts[n - 1].truncated and wts[n].truncated
    assert resolve_word(tok, long, "red")  # occurrences before the limit still map
    with pytest.raises(KeyError, match="not in the prompt"):
        resolve_word(tok, "a red circle", "square")


# ------------------------------------------------------------------------------ restore guarantees
def test_restore_exactly_also_on_exception(pipe):
    procs = processors(pipe.unet)
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with attached(CrossAttentionProbe(pipe, n_images=1, self_attention=[8]), TimestepProbe(pipe, n_images=1),
                      SkipProbe(pipe, n_images=1), SkipIntervention(pipe, skip_pairs(pipe.unet)[0], "zero")):
            _run(pipe, ["a red circle"])
            raise RuntimeError("boom")
    assert hooks_left(pipe.unet) == 0
    now = processors(pipe.unet)
    assert now.keys() == procs.keys() and all(now[k] is procs[k] for k in procs)
    sd = pipe.unet.state_dict()
    assert sd.keys() == state.keys() and all(torch.equal(sd[k], state[k]) for k in state)


def test_loud_errors(pipe):
    with pytest.raises(ProbeError, match="zero hooks fired"):
        with CrossAttentionProbe(pipe, n_images=1):
            pass
    assert hooks_left(pipe.unet) == 0
    from diffusers import UNet2DModel

    plain = UNet2DModel(sample_size=8, block_out_channels=(32, 32), norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ProbeError, match="no cross-attention modules"):
        CrossAttentionProbe(plain).__enter__()
    assert hooks_left(plain) == 0
    with pytest.raises(ProbeError, match="no cross-attention module at"):
        CrossAttentionProbe(pipe, layers=["down_blocks.9.attn2"]).__enter__()
    with pytest.raises(ProbeError, match="no skip named"):
        SkipIntervention(pipe, "nope", "zero").__enter__()
    assert hooks_left(pipe.unet) == 0


# ------------------------------------------------------------------------------ CFG, batches, sizes
def test_conditional_rows_detected_not_assumed():
    assert conditional_rows(4, 2, None) == slice(2, 4)
    assert conditional_rows(2, 2, None) == slice(0, 2)
    assert conditional_rows(6, None, True) == slice(3, 6)
    with pytest.raises(ProbeError):
        conditional_rows(3, 2, None)
    with pytest.raises(ProbeError):
        conditional_rows(4, None, None)


def test_cfg_and_batches(pipe):
    with CrossAttentionProbe(pipe, n_images=2) as no_cfg:
        _run(pipe, PROMPTS, guidance=1.0)
    with CrossAttentionProbe(pipe, n_images=4) as per_prompt:
        _run(pipe, PROMPTS, num_images_per_prompt=2)
    l0 = no_cfg.layers[0]
    assert no_cfg.maps(l0).shape[0] == 2 and per_prompt.maps(l0).shape[0] == 4
    heat = per_prompt.word_heatmaps(PROMPTS, (64, 64))
    assert len(heat) == 4 and "square" in heat[1] and "triangle" in heat[3] and "square" not in heat[2]
    with pytest.raises(ProbeError, match="neither the number of images"):
        with CrossAttentionProbe(pipe, n_images=3):
            _run(pipe, PROMPTS)
    # the conditional half recorded under CFG equals a direct conditional-only UNet call
    cond = inputs.conditioning(pipe, PROMPTS[:1], 64, 64)
    x = torch.randn(1, 4, 16, 16)
    uncond = pipe.encode_prompt([""], "cpu", 1, False)[0]
    with CrossAttentionProbe(pipe.unet, n_images=1) as a, torch.no_grad():
        pipe.unet(x, 500, **cond)
    with CrossAttentionProbe(pipe.unet, n_images=1) as b, torch.no_grad():
        pipe.unet(x.repeat(2, 1, 1, 1), 500, encoder_hidden_states=torch.cat([uncond, cond["encoder_hidden_states"]]))
    torch.testing.assert_close(a.maps(l0), b.maps(l0))


def test_non_square_and_timestep_bins_and_flat_memory(pipe):
    assert resolution_chain((16, 24), 24) == (4, 6) and resolution_chain((10, 6), 15) == (5, 3)
    with CrossAttentionProbe(pipe, n_images=1, timestep_bins=4) as short:
        _run(pipe, ["a red circle"], steps=2, height=64, width=96)
    with CrossAttentionProbe(pipe, n_images=1, timestep_bins=4) as long:
        _run(pipe, ["a red circle"], steps=6, height=64, width=96)
    assert short.memory_bytes() == long.memory_bytes()
    assert {long.resolution(l) for l in long.layers} == {"16x24", "8x12", "4x6"}
    heat = long.word_heatmaps(["a red circle"], (64, 96))[0]
    assert heat["circle"].shape == (64, 96)
    # DAAM's default set leaves the mid block (the 4x6 maps) out; mid_block=True adds it back
    daam = long.daam_layers()
    assert len(daam) == 10 and not any(l.startswith("mid_block") for l in daam)
    np.testing.assert_array_equal(heat["circle"], long.word_heatmaps(["a red circle"], (64, 96), layers=daam)[0]["circle"])
    with_mid = long.word_heatmaps(["a red circle"], (64, 96), mid_block=True)[0]["circle"]
    np.testing.assert_array_equal(with_mid, long.word_heatmaps(["a red circle"], (64, 96), layers=long.layers)[0]["circle"])
    assert not np.allclose(with_mid, heat["circle"])
    counts = long.buffers[long.layers[0]].count
    assert float(counts.sum()) == 6 and int((counts > 0).sum()) >= 2  # steps spread over the bins
    table = long.table(["a red circle"])
    assert set(table.columns) >= {"word", "token_index", "layer", "resolution", "t_bin", "t_lo", "t_hi", "mean",
                                  "max", "entropy"}
    assert len(table) == 3 * 11 * int((counts > 0).sum())
    assert (table["entropy"].between(0, 1)).all()


def test_self_attention_maps(pipe):
    with CrossAttentionProbe(pipe, n_images=1, self_attention=[8]) as probe:
        _run(pipe, ["a red circle"])
    assert len(probe.self_buffers) == 5  # attn1 at 8x8: down_blocks.1 (2) + up_blocks.1 (3)
    m = probe.self_attention_maps(next(iter(probe.self_buffers)))
    assert m.shape == (1, 64, 64)
    torch.testing.assert_close(m.sum(-1), torch.ones(1, 64), atol=1e-5, rtol=0)


def test_sdxl_layout():
    from tiny_sd.testing import random_sdxl_pipeline

    p = random_sdxl_pipeline(0)
    p.set_progress_bar_config(disable=True)
    with attached(CrossAttentionProbe(p, n_images=1), TimestepProbe(p, n_images=1), SkipProbe(p, n_images=1)) as (a, t, s):
        _run(p, ["a red circle"])
    assert len(a.layers) == 2 + 4 + 6  # transformer depths (1,2) in down, 2 in mid, (2x3) in up
    assert a.word_heatmaps(["a red circle"], (64, 64))[0]["red"].shape == (64, 64)
    assert len(t.table()) > 0 and len(s.table()) > 0 and hooks_left(p.unet) == 0


# ------------------------------------------------------------------------------ time embeddings and skips
def test_timestep_and_skip_interventions(pipe):
    from probes.skips import contributions, high_freq_share
    from probes.timestep import sensitivity

    unet = pipe.unet
    skips = skip_pairs(unet)
    assert len(skips) == 9 and skips[-1].name == "up_blocks.2.resnets.2"
    assert skips[-1].source == "conv_in" and skips[0].source == "down_blocks.2.resnets.1"
    x = torch.randn(1, 4, 16, 16)
    cond = inputs.conditioning(pipe, ["a red circle"], 64, 64)
    with torch.no_grad():
        ref = unet(x, 500, **cond).sample
        with SkipIntervention(unet, skips[-1], "scale", scale=1.0):
            same = unet(x, 500, **cond).sample
        with SkipIntervention(unet, skips[-1], "zero"):
            zeroed = unet(x, 500, **cond).sample
        with TembIntervention(unet, "down_blocks.0.resnets.0", "zero"):
            no_t = unet(x, 500, **cond).sample
    torch.testing.assert_close(same, ref)
    assert not torch.allclose(zeroed, ref) and not torch.allclose(no_t, ref)
    sens = sensitivity(unet, x, 500, cond, t_swap=0)
    assert set(sens["metric"]) == {"sens_zero", "sens_swap"} and (sens["value"] > 0).all()
    contrib = contributions(unet, x, 500, cond, scale=1.0)
    assert (contrib[contrib.metric == "delta_scale"]["value"] == 0).all()
    assert (contrib[contrib.metric == "delta_zero"]["value"] > 0).all()
    smooth = torch.ones(1, 1, 8, 8)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1
    assert float(high_freq_share(smooth)) == 0 and float(high_freq_share(checker[None, None])) == pytest.approx(1)
    assert hooks_left(unet) == 0
