"""Probe CLI, runners and heatmap evaluation on a random tiny pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from probes import CrossAttentionProbe
from probes import evaluation
from probes.__main__ import pop_subcommand
from probes.runner import run


def cfg(out, probe, **kw):
    base = dict(model=dict(name="tiny_sd", path="tiny_sd", device="cpu", dtype="float32"),
                prompt="a red circle left of a blue square", prompts=None, seed=0, sample_steps=2, guidance_scale=7.5,
                height=None, width=None, timestep_bins=5, out=str(out), probe=probe)
    base.update(kw)
    return base


def test_pop_subcommand():
    assert pop_subcommand(["m", "skips", "seed=1"]) == ["m", "probe=skips", "seed=1"]
    assert pop_subcommand(["m", "seed=1"]) == ["m", "seed=1"]
    with pytest.raises(ValueError, match="unknown probe 'heatmap'"):
        pop_subcommand(["m", "heatmap"])


def test_attention_runner_writes_the_contract_files(pipe, tmp_path):
    res = run(cfg(tmp_path, dict(name="attention", self_attention=[], mean_heads=False)), pipe=pipe)
    for f in ("image.png", "heatmaps.npz", "heatmaps.png", "heatmaps.pdf", "maps.csv", "token_mass.csv"):
        assert (tmp_path / f).exists(), f
    npz = np.load(tmp_path / "heatmaps.npz")
    assert sorted(npz.files) == sorted({"a", "red", "circle", "left", "of", "blue", "square"})
    assert npz["circle"].shape == (64, 64) and 0 <= npz["circle"].min() and npz["circle"].max() <= 1 + 1e-6
    maps = pd.read_csv(tmp_path / "maps.csv")
    assert list(maps.columns[:10]) == ["word", "token_index", "layer", "resolution", "t_bin", "t_lo", "t_hi",
                                       "mean", "max", "entropy"]
    assert res["probe_memory_bytes"] > 0


def test_attention_runner_refines_through_the_self_attention_it_records(pipe, tmp_path):
    from probes.attention_grids import heatmap_side

    from diffusers import UNet2DConditionModel

    assert heatmap_side(pipe.unet, 16) == 16  # tiny_sd: cross-attention already at the latent's 16x16
    sdxl_like = UNet2DConditionModel(  # no attention in the first block, as SDXL: heatmaps one level down
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8,
        attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    assert heatmap_side(sdxl_like, 16) == 8 and heatmap_side(sdxl_like, 15) == 8  # ceil(15 / 2)
    with CrossAttentionProbe(sdxl_like, n_images=1) as probe, torch.no_grad():
        sdxl_like(torch.randn(1, 4, 15, 16), 500, torch.randn(1, 7, 32))
    assert probe.finest_grid() == (8, 8)
    lopsided = UNet2DConditionModel(  # attention in the first up block only (level 1 there), down blocks without
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8,
        attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    assert heatmap_side(lopsided, 16) == 16  # the second up block runs at the latent's 16x16
    with CrossAttentionProbe(lopsided, n_images=1) as probe, torch.no_grad():
        lopsided(torch.randn(1, 4, 16, 16), 500, torch.randn(1, 7, 32))
    assert probe.finest_grid() == (16, 16)
    plain = run(cfg(tmp_path / "plain", dict(name="attention", self_attention=[], mean_heads=False)), pipe=pipe)
    res = run(cfg(tmp_path / "k2", dict(name="attention", self_attention=[], mean_heads=False, refine=2)), pipe=pipe)
    assert res["refine"] == 2 and plain["refine"] == 0 and res["words"] == plain["words"]
    assert [f for f in res["files"] if f.startswith("self_attention_")]  # the 16x16 attn1 maps it recorded
    a, b = np.load(tmp_path / "plain" / "heatmaps.npz"), np.load(tmp_path / "k2" / "heatmaps.npz")
    assert not np.allclose(a["circle"], b["circle"]) and np.isfinite(b["circle"]).all()
    for bad in (-1, 1.5, "two"):
        with pytest.raises(ValueError, match="probe.refine"):
            run(cfg(tmp_path / "bad", dict(name="attention", refine=bad)), pipe=pipe)
    assert not (tmp_path / "bad" / "image.png").exists()  # refused before sampling


def test_timestep_and_skips_runners(pipe, tmp_path):
    t = run(cfg(tmp_path / "t", dict(name="timestep", n_timesteps=3, swap_shift=500)), pipe=pipe)
    df = pd.read_csv(tmp_path / "t" / "timestep.csv")
    assert set(df["metric"]) == {"temb_rel_norm", "sens_zero", "sens_swap"} and set(df["timestep"]) == set(t["timesteps"])
    assert (tmp_path / "t" / "timestep.png").exists() and (tmp_path / "t" / "temb_cosine.csv").exists()
    assert 'data-measure="sens_swap"' in (tmp_path / "t" / "explorer.html").read_text()
    run(cfg(tmp_path / "s", dict(name="skips", n_timesteps=2, cutoff=0.25, scale=0.5)), pipe=pipe)
    df = pd.read_csv(tmp_path / "s" / "skips.csv")
    assert set(df["metric"]) == {"norm_ratio", "hf_skip", "hf_backbone", "delta_zero", "delta_mean", "delta_scale"}
    assert df["skip"].nunique() == 9 and (tmp_path / "s" / "skips.pdf").exists()
    assert 'data-measure="delta_scale"' in (tmp_path / "s" / "explorer.html").read_text()


def test_unknown_words_are_rejected_with_the_vocabulary(pipe, tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        run(cfg(tmp_path, dict(name="attention"), prompt="a pink circle"), pipe=pipe)


def test_iou_and_ground_truth():
    from tiny_sd import shapes

    assert evaluation.iou(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == pytest.approx(1 / 3)
    m, lo, hi = evaluation.bootstrap_ci([0.2, 0.4, 0.6, 0.8])
    assert m == pytest.approx(0.5) and lo < m < hi
    s = next(s for s in (shapes.sample(1, i, 2) for i in range(50)) if len({o.colour for o in s.objects}) == 2)
    truth = evaluation.generated_truth(s.image, s.caption)
    for w, mask in s.masks_by_word().items():
        assert evaluation.iou(truth[w], mask) > 0.95, w  # colour segmentation recovers the flat objects
    perfect = {w: m.astype(float) for w, m in s.masks_by_word().items()}
    rows = pd.DataFrame([dict(source="x", breakdown="all", **r) for r in evaluation.score(perfect, truth, [0.4])])
    assert rows["iou"].min() > 0.95
    assert evaluation.generated_truth(s.image, "a red circle left of a red square") is None


def test_cli_subprocess(tmp_path):
    from tiny_sd.testing import save_random_pipeline

    path = save_random_pipeline(tmp_path / "pipe")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "probes", "attention", f"model.path={path}", "seed=0", "sample_steps=2",
                        "prompt=a green square", f"out={out}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(np.load(out / "heatmaps.npz").files) == ["a", "green", "square"]


def test_evaluate_runner_end_to_end(pipe, tmp_path):
    """Generated and dataset sources, every breakdown incl. DAAM's per-pixel word normalisation, files written."""
    probe = dict(name="evaluate", n_generated=4, n_dataset=2, strength=0.6, batch_size=4, taus=[0.2, 0.4])
    res = run(cfg(tmp_path, probe, timestep_bins=2), pipe=pipe)
    for f in ("iou.csv", "miou.csv", "miou_by_area.csv", "iou_tau.png", "iou_tau.pdf", "iou_layers.png",
              "iou_layers.pdf"):
        assert (tmp_path / f).exists(), f
    rows = pd.read_csv(tmp_path / "iou.csv")
    assert set(rows.source) == {"generated", "dataset"}
    assert {"all", evaluation.WITH_MID, evaluation.NORMALISED, "resolution=8x8", "t_bin=0 (0-500)"} <= set(rows.breakdown)
    # one breakdown per recorded cross-attention layer, and a resolution ceiling per attention grid
    layers = {b for b in rows.breakdown if b.startswith("layer=")}
    assert len(layers) == 11 and "layer=mid_block.attentions.0.transformer_blocks.0.attn2" in layers
    assert set(res["layers_tau_0_4"]) == {b.removeprefix("layer=") for b in layers}
    assert {evaluation.CEILING.format(res=r) for r in ("16x16", "8x8", "4x4")} <= set(rows.breakdown)
    assert rows.auroc.dropna().between(0, 1).all() and rows.auroc.notna().any()
    assert rows.area.between(0, 1).all()
    areas = pd.read_csv(tmp_path / "miou_by_area.csv")
    shape_ds = areas[(areas.source == "dataset") & (areas.word_type == "shape")]
    n_shape = res["miou_tau_0_4"]["dataset/shape"]["n"]
    # the headline and every resolution ceiling, binned over the same (image, word) pairs
    assert set(shape_ds.breakdown) == {"all", *(evaluation.CEILING.format(res=r) for r in ("16x16", "8x8", "4x4"))}
    assert (shape_ds.groupby("breakdown").n.sum() == n_shape).all()
    assert shape_ds[["precision", "recall"]].stack().between(0, 1).all()
    assert 0 <= res["miou_tau_0_4"]["dataset/shape"]["recall"] <= 1
    ds = rows[(rows.source == "dataset") & (rows.tau == 0.4)]
    assert ds.iou.between(0, 1).all() and len(ds[ds.breakdown == "all"]) == len(ds[ds.breakdown == evaluation.NORMALISED])
    assert "dataset/shape" in res["miou_tau_0_4"] and "dataset/shape" in res["miou_tau_0_4_normalize_words"]
    # the floor and the ceiling are scored on the same (image, word) pairs as the heatmaps
    refs = res["references_tau_0_4"]
    floor, ceiling = refs[evaluation.UNIFORM], refs[next(k for k in refs if k != evaluation.UNIFORM)]
    assert floor["dataset/shape"]["n"] == res["miou_tau_0_4"]["dataset/shape"]["n"]
    assert floor["dataset/shape"]["miou"] < 0.3 < 0.7 < ceiling["dataset/shape"]["miou"]


def test_evaluate_needs_the_headline_tau_before_any_compute(pipe, tmp_path):
    probe = dict(name="evaluate", n_generated=4, n_dataset=0, strength=0.6, batch_size=4, taus=[0.5])
    with pytest.raises(ValueError, match="must include 0.4"):
        run(cfg(tmp_path, probe), pipe=pipe)
    assert not (tmp_path / "iou.csv").exists()


def test_evaluate_offset_scores_a_disjoint_slice_of_the_held_out_captions(pipe, tmp_path):
    """`probe.offset` (validation prompts for choosing models/settings) moves both sources to later held-out items."""
    from tiny_sd import shapes

    probe = dict(name="evaluate", n_generated=4, n_dataset=2, offset=3000, strength=0.6, batch_size=4, taus=[0.4])
    run(cfg(tmp_path, probe, timestep_bins=1), pipe=pipe)
    rows = pd.read_csv(tmp_path / "iou.csv")
    want = {shapes.sample(shapes.HELDOUT_SEED, i).caption for i in range(3000, 3004)}
    gen, ds = set(rows[rows.source == "generated"].prompt), set(rows[rows.source == "dataset"].prompt)
    assert gen and gen <= want
    assert ds == {shapes.sample(shapes.HELDOUT_SEED, i).caption for i in (3000, 3001)}


def test_token_attributions_are_complete_integrated_gradients(pipe):
    """IG's completeness (Sundararajan et al. 2017, Prop. 1): the attributions over all positions sum to
    F(prompt) - F(empty prompt); the reported delta is that residual, small against the difference itself."""
    import torch
    from probes import attribution

    prompt = "a red circle left of a blue square"
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    rows, delta = attribution.token_attributions(pipe, prompt, x_t, 500, n_steps=32)
    assert list(rows.word) == prompt.split() and (rows.n_tokens == 1).all()
    tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
    enc = lambda p: tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        ref = unet(x_t, 500, encoder_hidden_states=te(enc(prompt))[0]).sample
        f = [attribution._projection(unet(x_t, 500, encoder_hidden_states=te(enc(p))[0]).sample, ref).item() for p in (prompt, "")]
    assert abs(f[0] - f[1]) > 1e-3 and delta < 0.05 * abs(f[0] - f[1])
    assert rows.attribution.abs().sum() > 0


def test_skip_attribution_map_and_skip_names(pipe):
    import torch
    from probes import attribution
    from probes import inputs
    from probes.hooks import ProbeError
    from probes.skips import skip_pairs

    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = inputs.conditioning(pipe, ["a green square"], 64, 64)
    name, m = attribution.skip_attribution(pipe, x_t, 500, cond, size=(64, 48))
    assert name == skip_pairs(pipe.unet)[-1].name  # default: the skip feeding the last up resnet
    assert m.shape == (64, 48) and m.min() == pytest.approx(0.0) and m.max() == pytest.approx(1.0)
    first = skip_pairs(pipe.unet)[0].name
    name0, m0 = attribution.skip_attribution(pipe, x_t, 500, cond, skip_name=first)
    assert name0 == first and m0.shape == (16, 16) and not np.allclose(m0, m[::4, ::3])
    with pytest.raises(ProbeError, match="no skip named 'up->down'; skips are"):
        attribution.skip_attribution(pipe, x_t, 500, cond, skip_name="up->down")


def test_attribution_runner_files_and_early_skip_error(pipe, tmp_path, monkeypatch):
    from probes import runner

    probe = dict(name="attribution", timestep=500, n_steps=4, skip=None)
    res = run(cfg(tmp_path, probe), pipe=pipe)
    for f in ("attributions.csv", "skip_attribution.npz", "attribution.png", "attribution.pdf"):
        assert (tmp_path / f).exists(), f
    assert list(pd.read_csv(tmp_path / "attributions.csv").word) == "a red circle left of a blue square".split()
    assert np.load(tmp_path / "skip_attribution.npz").files == [res["skip"]]
    # a misspelt skip fails before any sampling or gradient work
    monkeypatch.setattr(runner, "_sample", lambda *a, **k: pytest.fail("sampled before validating probe.skip"))
    with pytest.raises(ValueError, match="probe.skip: no skip named 'typo'"):
        run(cfg(tmp_path / "bad", dict(probe, skip="typo")), pipe=pipe)
