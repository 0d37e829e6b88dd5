"""SD 1.5, SD 2.1 and SDXL end to end: random weights from the published configs (`tiny_sd.real_configs`), every
probe and every surgery op through the public API and the CLIs, with the model restored bit for bit afterwards.

Sizes: SD 1.5 and SD 2.1 at their real widths (860M-parameter UNets, real 12- and 23-layer text encoders), SDXL at
half width (160/320/640 channels; block types, depths 1/2/10, heads 5/10/20, text_time conditioning and both real
text encoders kept). Images are 64 px (latent 8; SDXL's attention grids are then 4x4 and 2x2), 2 sampling steps, one
re-noised timestep for the timestep/skips probes. The interventions of those two probes run batched through the
runner here (`probe.batch=64`, equal to one UNet call per intervention up to float rounding: tested in
`test_batched_interventions_equal_one_call_each`); the CLIs run them one call each, the default.

What runs where (the slow tests fit ~5 min on 2 cores): SD 1.5 and SDXL here, every probe and op through the API,
the attention probe and an ablation multirun (ops none, blocks) through the CLIs; SD 2.1 here with
`UNET_LAB_REAL_ARCHS=all`. benchmarks/real_architectures.py runs all three with every probe and every op through
the API *and* the CLIs and records the wall times (benchmarks/results/real_architectures_cpu.txt).

The tokenizer is tiny_sd's (77-token context), so `is_tiny_sd(pipe)` is True for these pipelines: that only means
prompts are checked against the shapes vocabulary, which the prompt used here passes
(`test_published_configs_and_sizes`). Peak memory ~12 GiB: one architecture in memory with a snapshot of its UNet,
a deep copy during surgery, and a CLI subprocess loading the saved folder.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tiny_sd import real_configs

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle left of a blue square"
# 64 px images (latent 8) for all three: 1/8 of SD 1.5's 512 px; SDXL's attention then runs on 4x4 (depth 2) and
# 2x2 (depth 10) grids, its first level (8x8) having none. benchmarks/real_architectures.py runs SDXL at 128 px.
LATENT = {"sd15": 8, "sd21": 8, "sdxl": 8}
# the published parameter counts of each component (UNet at full width)
PARAMS = {"sd15": dict(unet=859_520_964, vae=83_653_863, text=[123_060_480]),
          "sd21": dict(unet=865_910_724, vae=83_653_863, text=[340_387_840]),
          "sdxl": dict(unet=2_567_463_684, vae=83_653_863, text=[123_060_480, 694_659_840])}


# ----------------------------------------------------------------------------------------------- helpers
def expected_attn2(unet) -> list[str]:
    """Every cross-attention path, derived from the config (not from the module tree the probe walks)."""
    c = unet.config
    n = len(c.block_out_channels)
    tlpb = c.transformer_layers_per_block
    tlpb = list(tlpb) if isinstance(tlpb, (list, tuple)) else [tlpb] * n
    lpb = c.layers_per_block
    out = []
    for i, kind in enumerate(c.down_block_types):
        if kind.startswith("CrossAttn"):
            out += [f"down_blocks.{i}.attentions.{a}.transformer_blocks.{k}.attn2"
                    for a in range(lpb) for k in range(tlpb[i])]
    out += [f"mid_block.attentions.0.transformer_blocks.{k}.attn2" for k in range(tlpb[-1])]
    for j, kind in enumerate(c.up_block_types):
        if kind.startswith("CrossAttn"):
            out += [f"up_blocks.{j}.attentions.{a}.transformer_blocks.{k}.attn2"
                    for a in range(lpb + 1) for k in range(tlpb[::-1][j])]
    return out


def n_resnets(unet) -> tuple[int, int]:
    """(time-conditioned ResnetBlock2Ds, up resnets = long skips) from the config."""
    c = unet.config
    lpb, n_up = c.layers_per_block, len(c.up_block_types)
    return lpb * len(c.down_block_types) + 2 + (lpb + 1) * n_up, (lpb + 1) * n_up


def snapshot(unet) -> dict:
    from probes import processors

    return dict(state={k: v.detach().clone() for k, v in unet.state_dict().items()}, procs=processors(unet),
                types=[type(m) for m in unet.modules()])


def assert_restored(unet, snap) -> None:
    """state_dict bit-equal, the same processor objects, the same module types, no hook left."""
    from probes import hooks_left, processors

    state = unet.state_dict()
    assert state.keys() == snap["state"].keys()
    changed = [k for k, v in snap["state"].items() if not torch.equal(state[k], v)]
    assert not changed, changed[:5]
    now = processors(unet)
    assert now.keys() == snap["procs"].keys() and all(now[k] is p for k, p in snap["procs"].items())
    assert [type(m) for m in unet.modules()] == snap["types"]
    assert hooks_left(unet) == 0


def probe_cfg(out, probe, **kw) -> dict:
    base = dict(model=dict(name="real", path="unused", device="cpu", dtype="float32"), prompt=PROMPT, prompts=None,
                seed=0, sample_steps=2, guidance_scale=7.5, height=None, width=None, timestep_bins=2, out=str(out),
                probe=probe)
    base.update(kw)
    return base


def unet_inputs(pipe, batch: int = 1):
    """(x, t, cond) for a bare UNet call of `pipe` at its latent size."""
    from probes import inputs

    lat = pipe.unet.config.sample_size
    cond = inputs.conditioning(pipe, [PROMPT] * batch, lat * pipe.vae_scale_factor, lat * pipe.vae_scale_factor)
    x = torch.randn(batch, 4, lat, lat, generator=torch.Generator().manual_seed(1))
    return x, 500, cond


def run_cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


# ----------------------------------------------------------------------------------------------- fast checks
def test_published_configs_and_sizes():
    """The dicts are the published configs: every component has its published parameter count (on the meta device,
    nothing allocated), and the scaled SDXL keeps the structure."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        for arch, want in PARAMS.items():
            assert count(UNet2DConditionModel(**real_configs.unet_config(arch))) == want["unet"], arch
            assert count(AutoencoderKL(**real_configs.vae_config(arch))) == want["vae"], arch
            texts = [(CLIPTextModelWithProjection if i else CLIPTextModel)(CLIPTextConfig(**c))
                     for i, c in enumerate(real_configs.text_configs(arch))]
            assert [count(t) for t in texts] == want["text"], arch
        half = UNet2DConditionModel(**real_configs.unet_config("sdxl", 0.5))
    full = real_configs.unet_config("sdxl")
    assert list(half.config.block_out_channels) == [160, 320, 640]
    for key in ("down_block_types", "up_block_types", "transformer_layers_per_block", "attention_head_dim",
                "cross_attention_dim", "addition_embed_type", "addition_time_embed_dim", "use_linear_projection",
                "projection_class_embeddings_input_dim", "layers_per_block", "mid_block_type"):
        assert list(np.atleast_1d(half.config[key])) == list(np.atleast_1d(full[key])), key
    assert half.add_embedding.linear_1.in_features == 2816  # 1280 pooled + 6 x 256 time ids
    assert half.down_blocks[1].attentions[0].transformer_blocks[0].attn2.heads == 10
    assert len(half.down_blocks[2].attentions[0].transformer_blocks) == 10
    assert real_configs.SD21_SCHEDULER["prediction_type"] == "v_prediction" and real_configs.SD21_UNET["upcast_attention"] is True
    with pytest.raises(ValueError, match="multiple of 160"):
        real_configs.unet_config("sdxl", 0.25)
    with pytest.raises(ValueError, match="unknown architecture"):
        real_configs.unet_config("sd3")
    tok = real_configs.tokenizer()
    assert tok.model_max_length == 77 and len(tok(PROMPT).input_ids) == 10  # 8 words + start + end
    # tiny's end token has the highest id: CLIP's legacy pooling (eos_token_id == 2: argmax of the ids) finds it
    assert tok.eos_token_id == max(tok.get_vocab().values()) and real_configs.CLIP_VIT_L_TEXT["eos_token_id"] == 2
    # the shapes vocabulary makes `is_tiny_sd` True: prompts are checked against it (the one used here passes)
    from types import SimpleNamespace

    from tiny_sd.prompts import check_prompts, is_tiny_sd

    fake = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=[1] * 4, sample_size=8)),
                           tokenizer=tok, vae_scale_factor=8)
    assert is_tiny_sd(fake)
    check_prompts(fake, [PROMPT], 64, 64)
    with pytest.raises(ValueError):
        check_prompts(fake, ["a photo of a cat"], 64, 64)


def test_config_edits_reach_a_model_built_from_a_published_config():
    """SD 1.5's and 2.1's config.json set neither `mid_block_type` nor `transformer_layers_per_block`; diffusers then
    lists them in `_use_default_values` and `from_config` dropped our edits of them: BK-SDM `mid` removal kept the
    mid block and the scratch depth-k UNet had depth 1. (tiny_sd's config sets both, so its tests could not see it.)"""
    from diffusers import UNet2DConditionModel

    from ablations import depth, surgery

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**real_configs.unet_config("sd15", 0.1)).eval()  # the published key set, 32-128 channels
    assert {"mid_block_type", "transformer_layers_per_block"} <= set(unet.config["_use_default_values"])
    small = surgery.apply(unet, {"op": "blocks", "remove": ["pairs", "mid"]})
    assert small.mid_block is None and small.config.mid_block_type is None
    assert surgery.apply(unet, {"op": "blocks", "remove": ["mid"]}).mid_block is None
    deep = surgery.apply(unet, {"op": "depth", "k": 2}, from_scratch=True)
    assert {len(m.transformer_blocks) for m in depth.spatial_transformers(deep).values()} == {2}
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 768)
    with torch.no_grad():
        assert small(x, 10, c).sample.shape == deep(x, 10, c).sample.shape == (1, 4, 8, 8)


def test_euler_renoising_is_q_xt_given_x0():
    """`probes.inputs.noised` on SDXL's Euler scheduler gives the UNet's training-time input at t. Before,
    `scheduler.add_noise` returned x0 + sigma * eps at the *last sampling step's* sigma for every t after a
    pipeline call (so every timestep of timestep.csv/skips.csv was the same one), and raised for t off the schedule;
    for DDIM/PNDM nothing changes, bit for bit."""
    from diffusers import DDPMScheduler

    from probes import inputs

    class P:
        pass

    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for arch in real_configs.ARCHS:
        p = P()
        p.scheduler = real_configs.scheduler(arch)
        p.scheduler.set_timesteps(2)
        if hasattr(p.scheduler, "set_begin_index"):
            p.scheduler.set_begin_index(0)  # as a pipeline call leaves it
        ddpm = DDPMScheduler.from_config(p.scheduler.config)
        for t in (999, 500, 0):
            got = inputs.noised(p, x0, eps, t)
            assert torch.equal(got, ddpm.add_noise(x0, eps, torch.tensor([t]))), (arch, t)
            if arch != "sdxl":
                assert torch.equal(got, p.scheduler.add_noise(x0, eps, torch.tensor([t])))
        a = p.scheduler.alphas_cumprod
        assert not torch.allclose(inputs.noised(p, x0, eps, 999), inputs.noised(p, x0, eps, 0))
        assert torch.allclose(inputs.noised(p, x0, eps, 999), a[999].sqrt() * x0 + (1 - a[999]).sqrt() * eps)


def test_batched_interventions_equal_one_call_each():
    """`sensitivity` / `contributions` with batch > 1 (several interventions per UNet call, the reference in the
    same call) agree with one call per intervention up to float rounding, on tiny_sd and on SDXL's layout; an
    intervention that changes nothing stays exactly 0; and the default (batch=1) is the loop it always was."""
    from probes import SkipIntervention, TembIntervention
    from probes import inputs
    from probes.hooks import hooks_left
    from probes.skips import contributions, skip_pairs
    from probes.timestep import _Capture, relative_change, sensitivity, time_conditioned_resnets
    from tiny_sd.testing import random_pipeline, random_sdxl_pipeline

    for pipe in (random_pipeline(0), random_sdxl_pipeline(0)):
        unet = pipe.unet
        cond = inputs.conditioning(pipe, ["a red circle", "a blue square"], 64, 64)
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # the loop as it was written before batching, for the default's identity
            ref = unet(x, 300, **cond).sample
            blocks = list(time_conditioned_resnets(unet))
            with _Capture(unet, blocks) as cap:
                unet(x, 800, **cond)
            loop = []
            for b in blocks:
                for mode, value in (("zero", None), ("swap", cap.out[b])):
                    with TembIntervention(unet, b, mode, value):
                        loop.append(relative_change(unet(x, 300, **cond).sample, ref).mean().item())
            skip_loop = []
            for s in skip_pairs(unet):
                for mode in ("zero", "mean", "scale"):
                    with SkipIntervention(unet, s, mode, 0.5):
                        skip_loop.append(relative_change(unet(x, 300, **cond).sample, ref).mean().item())
        one = sensitivity(unet, x, 300, cond, t_swap=800)
        assert one.value.tolist() == loop
        assert contributions(unet, x, 300, cond).value.tolist() == skip_loop
        for batch in (5, 64):
            many = sensitivity(unet, x, 300, cond, t_swap=800, batch=batch)
            assert many[["block", "metric"]].equals(one[["block", "metric"]])
            np.testing.assert_allclose(many.value, one.value, rtol=1e-4, atol=1e-6)
            sk = contributions(unet, x, 300, cond, batch=batch)
            np.testing.assert_allclose(sk.value, skip_loop, rtol=1e-4, atol=1e-6)
            assert ((sk.value == 0) == (np.array(skip_loop) == 0)).all()
        assert hooks_left(unet) == 0
        with pytest.raises(ValueError, match="batch=0"):
            sensitivity(unet, x, 300, cond, t_swap=800, batch=0)


def test_sdxl_token_attributions_are_complete():
    """Token IG on SDXL (both text encoders on one path; raised ProbeError before): per word, and complete, i.e. the
    attributions over all positions sum to F(prompt) - F(path start), the start being the empty prompt's embeddings
    with the pooled text_embeds read at the prompt's end position (the ids choose that position, not the path)."""
    from probes import attribution
    from tiny_sd.testing import random_sdxl_pipeline

    pipe = random_sdxl_pipeline(0)
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    rows, delta = attribution.token_attributions(pipe, "a red circle left of a blue square", x_t, 500, n_steps=32)
    assert list(rows.word) == PROMPT.split() and rows.attribution.abs().sum() > 0
    ids = attribution._ids(pipe.tokenizer, PROMPT, "cpu")
    ids_2, base_2 = attribution._ids(pipe.tokenizer_2, PROMPT, "cpu"), attribution._ids(pipe.tokenizer_2, "", "cpu")
    at = attribution._pooling_position(pipe, ids_2)
    assert at == int((ids_2[0] == pipe.tokenizer_2.eos_token_id).nonzero()[0])  # the prompt's end token
    with torch.no_grad():
        cond = attribution.sdxl_text_conditioning(pipe, ids, ids_2, 64, 64)
        from probes import inputs

        want = inputs.conditioning(pipe, [PROMPT], 64, 64)  # what the pipeline itself conditions on
        assert torch.equal(cond["encoder_hidden_states"], want["encoder_hidden_states"])
        assert torch.equal(cond["added_cond_kwargs"]["text_embeds"], want["added_cond_kwargs"]["text_embeds"])
        ref = pipe.unet(x_t, 500, **cond).sample
        start = pipe.unet(x_t, 500, **attribution.sdxl_text_conditioning(pipe, attribution._ids(pipe.tokenizer, "", "cpu"), base_2, 64,
                                                                  64, pool_at=at)).sample
        gap = float(attribution._projection(ref, ref) - attribution._projection(start, ref))
    assert abs(gap) > 1e-4 and delta < 0.05 * abs(gap)


# ----------------------------------------------------------------------------------------------- real architectures
ALL = os.environ.get("UNET_LAB_REAL_ARCHS", "") == "all"
CI_ARCHS = [pytest.param(a, marks=pytest.mark.skipif(
    a == "sd21" and not ALL, reason="SD 2.1 runs in benchmarks/real_architectures.py (results in "
    "benchmarks/results/real_architectures_cpu.txt); UNET_LAB_REAL_ARCHS=all runs it here too")) for a in real_configs.ARCHS]


@pytest.fixture(scope="module", params=CI_ARCHS)
def real(request, tmp_path_factory):
    """One architecture at a time (pytest finishes every test of one param before building the next): the
    pipeline, a snapshot of its UNet, and the folder it was saved to."""
    from foundation.checkpoints import save_pipeline, verify_pipeline

    arch = request.param
    torch.manual_seed(0)
    pipe = real_configs.build_pipeline(arch, sample_size=LATENT[arch])
    folder = save_pipeline(pipe, tmp_path_factory.mktemp(f"pipe_{arch}") / arch)
    checked = verify_pipeline(pipe, folder, label=arch)  # the files hold exactly the in-memory tensors
    assert set(checked) >= {"unet", "vae", "text_encoder"} | ({"text_encoder_2"} if arch == "sdxl" else set())
    held = dict(arch=arch, pipe=pipe, snap=snapshot(pipe.unet), folder=folder)
    yield held
    held.clear()  # pytest keeps the fixture value until its teardown ends: free the weights before the next arch
    del pipe
    gc.collect()


@pytest.mark.slow
def test_attention_probe_records_every_layer(real, tmp_path):
    """Every cross-attention layer (SDXL: all 10 blocks of each deep transformer, 70 layers) in the layer list and
    in maps.csv, per layer; self-attention on the heatmap grid; the UNet restored."""
    from probes.attention_grids import heatmap_side
    from probes.runner import run

    pipe, arch = real["pipe"], real["arch"]
    want = expected_attn2(pipe.unet)
    assert len(want) == {"sd15": 16, "sd21": 16, "sdxl": 70}[arch]
    side = heatmap_side(pipe.unet, LATENT[arch])
    res = run(probe_cfg(tmp_path, dict(name="attention", self_attention=[side], mean_heads=False)), pipe=pipe)
    assert sorted(res["layers"]) == sorted(want)
    maps = pd.read_csv(tmp_path / "maps.csv")
    assert set(maps.layer) == set(want)
    assert maps.groupby("layer").word.nunique().eq(7).all()  # every word in every layer
    if arch == "sdxl":
        deep = {l for l in maps.layer if l.startswith("down_blocks.2.attentions.0.")}
        assert deep == {f"down_blocks.2.attentions.0.transformer_blocks.{k}.attn2" for k in range(10)}
        assert set(maps[maps.layer.isin(deep)].resolution) == {"2x2"}
    size = LATENT[arch] * pipe.vae_scale_factor
    heat = np.load(tmp_path / "heatmaps.npz")
    assert sorted(heat.files) == sorted(set(PROMPT.split())) and heat["circle"].shape == (size, size)
    assert all(np.isfinite(heat[w]).all() for w in heat.files)
    selfs = [f for f in res["files"] if f.startswith("self_attention_")]
    assert selfs and all(np.load(tmp_path / f).shape == (1, side * side, side * side) for f in selfs)
    heads = pd.read_csv(tmp_path / "heads.csv")
    assert set(heads.layer) == set(want)
    assert_restored(pipe.unet, real["snap"])


@pytest.mark.slow
def test_timestep_skips_attribution_probes(real, tmp_path):
    """The three analysis probes through `probes.runner.run`: every time-conditioned resnet and every skip, on each
    scheduler (PNDM, DDIM v-prediction, Euler), token IG on one and (SDXL) two text encoders; UNet restored."""
    from probes import runner

    pipe, arch = real["pipe"], real["arch"]
    n_blocks, n_skips = n_resnets(pipe.unet)
    t = runner.run(probe_cfg(tmp_path / "t", dict(name="timestep", n_timesteps=1, swap_shift=500, batch=64)),
                   pipe=pipe)
    df = pd.read_csv(tmp_path / "t" / "timestep.csv")
    assert len(t["blocks"]) == n_blocks and df.block.nunique() == n_blocks
    assert set(df.metric) == {"temb_rel_norm", "sens_zero", "sens_swap"} and set(df.timestep) == {999}
    assert np.isfinite(df.value).all() and (df[df.metric == "sens_zero"].value > 0).all()
    s = runner.run(probe_cfg(tmp_path / "s", dict(name="skips", n_timesteps=1, cutoff=0.25, scale=0.5, batch=64)),
                   pipe=pipe)
    df = pd.read_csv(tmp_path / "s" / "skips.csv")
    assert len(s["skips"]) == n_skips and df.skip.nunique() == n_skips and np.isfinite(df.value).all()
    assert set(df.metric) == {"norm_ratio", "hf_skip", "hf_backbone", "delta_zero", "delta_mean", "delta_scale"}
    a = runner.run(probe_cfg(tmp_path / "a", dict(name="attribution", timestep=500, n_steps=2, skip=None)), pipe=pipe)
    rows = pd.read_csv(tmp_path / "a" / "attributions.csv")
    assert list(rows.word) == PROMPT.split() and np.isfinite(rows.attribution).all()
    assert a["skip"].endswith(f"up_blocks.{len(pipe.unet.up_blocks) - 1}.resnets.{pipe.unet.config.layers_per_block}")
    assert np.isfinite(a["ig_delta"])
    assert_restored(pipe.unet, real["snap"])


def _specs() -> dict[str, dict]:
    """Every op of configs/ablation/*.yaml as shipped, plus the variants whose code paths differ (more variants, and
    every op through the CLI, in benchmarks/real_architectures.py)."""
    from omegaconf import OmegaConf

    files = sorted((ROOT / "configs/ablation").glob("*.yaml"))
    specs = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in files}
    specs.update({
        "depth_1": dict(op="depth", k=1),  # SDXL: 2 -> 1 and 10 -> 1; SD 1.x/2.x: the identity
        "blocks_pairs_mid": dict(op="blocks", remove=["pairs", "mid"]),  # BK-SDM-Small: builds from the config
    })
    return specs


@pytest.mark.slow
def test_every_surgery_op_on_a_copy(real):
    """`ablations.surgery.apply` of every op: runs on the architecture (linear projections, 10-deep transformers,
    text_time conditioning), changes the output (the identity ops keep it), and leaves the base bit-equal."""
    from ablations import blocks, depth, norms, skips, surgery

    pipe, arch = real["pipe"], real["arch"]
    base = pipe.unet
    x, t, cond = unet_inputs(pipe)
    with torch.no_grad():
        ref = base(x, t, **cond).sample
    specs = _specs()
    assert {s["op"] for s in specs.values()} == set(surgery.OPS)
    depths = [len(m.transformer_blocks) for m in depth.spatial_transformers(base).values()]
    for name, spec in specs.items():
        new = surgery.apply(base, spec)
        assert new is not base
        with torch.no_grad():
            out = new.eval()(x, t, **cond).sample
        assert out.shape == ref.shape and torch.isfinite(out).all(), name
        # identities: `none`, and keeping k blocks where no transformer is deeper (SD 1.x/2.x: depth 1 everywhere)
        if spec["op"] == "none" or (spec["op"] == "depth" and spec["k"] >= max(depths)):
            assert torch.equal(out, ref), name
        else:
            assert not torch.allclose(out, ref, atol=1e-5), name
        if spec["op"] == "norms":
            for n in norms.find_norms(base, spec.get("targets", norms.TARGETS)):
                m = new.get_submodule(n)
                assert m.num_groups == 1 if spec["kind"] == "layernorm" else type(m) is not torch.nn.GroupNorm, n
        elif spec["op"] == "depth":
            assert {len(m.transformer_blocks) for m in depth.spatial_transformers(new).values()} == {spec["k"]}
        elif spec["op"] == "attention":
            zero = [k for k, p in new.attn_processors.items() if isinstance(p, depth.ZeroAttnProcessor)]
            assert len(zero) == len(expected_attn2(base)) and all(spec["which"][0] in k for k in zero)
        elif spec["op"] == "blocks":
            assert [len(b.resnets) for b in new.down_blocks] == [1] * len(base.down_blocks)
            assert (new.mid_block is None) == ("mid" in spec["remove"])
            assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in base.parameters())
        elif spec["op"] == "freeu":
            assert isinstance(new.up_blocks[0].freeu, skips.FreeU) and isinstance(new.up_blocks[1].freeu, skips.FreeU)
        elif spec["op"] == "skips":
            assert any(isinstance(getattr(b, "skip_edit", None), skips.SkipEdit) for b in new.up_blocks)
        del new, out
        gc.collect()
        from probes import hooks_left, processors

        assert hooks_left(base) == 0 and processors(base) == real["snap"]["procs"], name
    assert_restored(base, real["snap"])  # bit-equal after all of them (a change to the base would persist)
    if arch == "sdxl":  # the 1/2/10 depths: k is bounded by the shallowest transformer (2), scratch builds any k
        assert depth.depth(base) == 2
        with pytest.raises(ValueError, match=r"valid: 0\.\.2"):
            surgery.validate(base, {"op": "depth", "k": 3})
    assert blocks.student_config(base, ["pairs"])["layers_per_block"] == 1


@pytest.mark.slow
def test_img2img_pipeline_with_the_attention_probe(real):
    """Another pipeline class over the same components (img2img) calls the UNet the probe records."""
    from foundation import sampling
    from probes import CrossAttentionProbe

    pipe, arch = real["pipe"], real["arch"]
    i2i = real_configs.img2img(pipe)
    size = LATENT[arch] * pipe.vae_scale_factor
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with CrossAttentionProbe(i2i, n_images=1, timestep_bins=2) as probe:
        latents = i2i(PROMPT, image=image, strength=0.6, num_inference_steps=4, guidance_scale=5.0,
                      generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert latents.shape == (1, 4, LATENT[arch], LATENT[arch])
    assert sorted(probe.layers) == sorted(expected_attn2(pipe.unet))
    heat = probe.word_heatmaps([PROMPT], (size, size))[0]
    assert set(heat) == set(PROMPT.split()) and all(np.isfinite(h).all() for h in heat.values())
    assert sampling.decode(i2i, latents).shape == (1, size, size, 3)
    assert_restored(pipe.unet, real["snap"])


@pytest.mark.slow
def test_probe_cli_on_the_saved_folder(real, tmp_path):
    """`python -m probes attention model.path=DIR`: the folder loads (every tensor verified) and the probe runs."""
    pipe = real["pipe"]
    out = tmp_path / "attn"
    run_cli(["probes", "attention", f"model.path={real['folder']}", "model.device=cpu", "model.dtype=float32",
             "sample_steps=2", f"prompt={PROMPT}", f"out={out}", "timestep_bins=2"])
    res = json.loads((out / "result.json").read_text())
    assert sorted(res["layers"]) == sorted(expected_attn2(pipe.unet))
    assert set(pd.read_csv(out / "maps.csv").layer) == set(expected_attn2(pipe.unet))


CLI_OPS = ("none", "blocks")  # CI: the job path on the architecture; every op through the CLI: the benchmark


def ablation_cli(folder, sweep, ops=CLI_OPS) -> dict[str, dict]:
    """One `python -m ablations -m ablation=<ops> model.path=folder` multirun at a tiny budget: {op: result.json}."""
    run_cli(["ablations", "-m", f"model.path={folder}", "model.device=cpu", "model.dtype=float32",
             f"ablation={','.join(ops)}", "budget=smoke", "budget.val_data=2", "budget.n_images=1",
             "budget.sample_steps=1", "budget.sample_batch=1", "budget.grid_images=1", "image_metrics=false",
             "progress=false", f"hydra.sweep.dir={sweep}"])
    return {op: json.loads((Path(sweep) / "jobs" / f"{op}__seed0" / "result.json").read_text()) for op in ops}


@pytest.mark.slow
def test_ablation_cli_on_the_saved_folder(real, tmp_path):
    """`python -m ablations -m ablation=none,blocks model.path=DIR budget=smoke`: one multirun, each job ok (SDXL
    included: its UNet gets both encoders' states, the pooled embedding and the time ids)."""
    results = ablation_cli(real["folder"], tmp_path / "sweep")
    bad = {op: r["error"] for op, r in results.items() if r["status"] != "ok"}
    assert not bad, bad
    assert all(np.isfinite(r["metrics"]["denoising_loss"]) for r in results.values())
    assert results["blocks"]["params"] < results["none"]["params"]


@pytest.mark.slow
def test_causal_probe_on_the_architecture(real, tmp_path):
    """Activation patching and a token knockout through the runner: every site kind's group, levels named by the
    site map; patching every site gives the source; the time embedding carries the prompt only in SDXL (its pooled
    text enters there), so patching it alone moves SD 1.x by nothing; the UNet restored."""
    from probes.runner import run

    pipe, arch = real["pipe"], real["arch"]
    probe = dict(name="causal", mode="patch", counterfactual="a green circle left of a blue square",
                 counterfactuals=None, direction="denoising", word=None, other=None, tokens=["word"], factor=2.0,
                 noise=3.0, pairs=None, n_pairs=1, n_seeds=1, kinds=["time_embedding", "resnet", "transformer", "attn2",
                                                                     "skip"],
                 sites=None, singles=False, groups=True, batch=16, cache_items=1, top_k=2)
    res = run(probe_cfg(tmp_path / "p", probe, timestep_bins=1), pipe=pipe)  # one bin: each group once
    t = pd.read_csv(tmp_path / "p" / "causal.csv")
    t = t[(t.measure == "latent_toward_source") & (t.t_bin.astype(str) == "all")].set_index("site")
    assert {"kind:time_embedding", "kind:resnet", "kind:transformer", "kind:attn2", "kind:skip", "all", "none"} <= set(t.index)
    levels = sorted(int(s[6:]) for s in t.index if s.startswith("level:"))
    assert levels == ([1, 2] if arch == "sdxl" else [0, 1, 2, 3])  # SDXL: no attention at level 0; the mid block is level 3
    assert t.value["none"] == 0 and abs(t.value["all"] - 1) < 1e-3
    temb = t.value["kind:time_embedding"]
    assert abs(temb) > 1e-3 if arch == "sdxl" else abs(temb) < 1e-4, temb
    if arch != "sdxl":  # SD 1.x: the prompt enters only through cross-attention
        assert abs(t.value["kind:attn2"] - 1) < 1e-3
    assert res["n_configurations"] == len(t)
    ko = run(probe_cfg(tmp_path / "k", {**probe, "mode": "knockout", "word": "red"}, timestep_bins=1), pipe=pipe)
    k = pd.read_csv(tmp_path / "k" / "causal.csv")
    k = k[(k.measure == "latent_change") & (k.t_bin.astype(str) == "all")].set_index("site")
    assert k.value["none"] == 0 and k.value["all"] > 0 and ko["mode"] == "knockout"
    assert_restored(pipe.unet, real["snap"])
