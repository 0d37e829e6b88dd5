"""Causal probes: activation patching, restoring a corrupted word, cross-attention token edits, their tables, and the
ground truth on tiny_sd (patching everything gives the source, nothing gives the target, knocking out a colour word
removes the colour)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from foundation import sampling
from probes import causal
from probes.attention_maths import attention_probs
from probes.hooks import hooks_left, processors
from probes.interventions import attend, knockout, reweight, swap, swap_order
from probes.patching import site_key
from probes.text_noise import corrupted

RUN = dict(n_bins=3, sample_steps=3, guidance_scale=7.5, height=None, width=None, seed=0)
PROMPT, COUNTER = "a red circle left of a blue square", "a green circle left of a blue square"


def configs_named(configs, *names):
    return [c for c in configs if c.site in names]


# ------------------------------------------------------------------------------------------------------ pure parts
def test_differing_word_and_items():
    assert causal.differing_word(PROMPT, COUNTER) == 1
    with pytest.raises(ValueError, match="differ in exactly one word"):
        causal.differing_word("a red circle", "a blue square")
    with pytest.raises(ValueError, match="3 vs 2 words"):
        causal.differing_word("a red circle", "red circle")
    den = causal.build_items("patch", [PROMPT], counterfactuals=[COUNTER], n_seeds=2, seed=5)
    noi = causal.build_items("patch", [PROMPT], counterfactuals=[COUNTER], direction="noising", n_seeds=2, seed=5)
    assert [(i.source, i.target, i.word) for i in den] == [(PROMPT, COUNTER, "red")] * 2
    assert [(i.source, i.target, i.word) for i in noi] == [(COUNTER, PROMPT, "green")] * 2
    assert den[0].seed != den[1].seed and [i.seed for i in den] == [i.seed for i in noi]
    sw = causal.build_items("swap", [PROMPT], word="red", other="blue")[0]
    assert (sw.index, sw.partner) == (1, 6) and causal.swapped(PROMPT, 1, 6) == "a blue circle left of a red square"
    with pytest.raises(ValueError, match="not in the prompt"):
        causal.build_items("knockout", [PROMPT], word="green")
    with pytest.raises(ValueError, match="occurs 2 times"):
        causal.build_items("knockout", [PROMPT], word="a")
    # generated pairs: the changed occurrence of a repeated word, not its first
    rep = causal.build_items("restore", ["a red circle left of a red square"],
                             counterfactuals=["a red circle left of a blue square"])[0]
    assert rep.index == 6


def test_configurations_and_plan(pipe):
    sites = causal.select_sites(pipe.unet, ["attn2", "skip"])
    assert [s.kind for s in sites].count("attn2") == 11 and [s.kind for s in sites].count("skip") == 9
    configs = causal.configurations(sites, 3)
    # none; 20 sites x (3 bins + all); kinds attn2, skip; attn2 at levels 0, 1, 2; all -- each x 4
    assert len(configs) == 1 + 20 * 4 + (2 + 3 + 1) * 4
    assert configs[0].site == "none" and configs[0].members == ()
    plan = causal.plan(configs, 3)
    key = site_key(sites[0])
    row = next(r for r, c in enumerate(configs) if c.site == key and c.t_bin == 1)
    assert plan[key][:, row].tolist() == [False, True, False]
    every = next(r for r, c in enumerate(configs) if c.site == "all" and c.t_bin is None)
    assert all(p[:, every].all() for p in plan.values())
    only = causal.configurations(causal.select_sites(pipe.unet, ["attn2"]), 2, singles=False)
    assert "kind:attn2" not in {c.site for c in only} and {"all", "level:0"} <= {c.site for c in only}
    named = causal.select_sites(pipe.unet, ["attn2", "resnet"], ["down.1.attn.0", "up_blocks.1.resnets.2"])
    assert [site_key(s) for s in named] == ["attn2:down_blocks.1.attentions.0.transformer_blocks.0.attn2",
                                            "resnet:up_blocks.1.resnets.2"]
    with pytest.raises(ValueError, match="unknown sites"):
        causal.select_sites(pipe.unet, ["attn2"], ["down.7.attn.0"])


def test_attention_edits_are_what_they_say(pipe):
    p = torch.softmax(torch.randn(2, 2, 5, 7), -1)
    keys = torch.zeros(2, 7, dtype=torch.bool)
    keys[:, 2] = True
    k = knockout(p, keys)
    assert torch.allclose(k.sum(-1), torch.ones(2, 2, 5)) and (k[..., 2] == 0).all()
    assert torch.allclose(k[..., 3] / k[..., 4], p[..., 3] / p[..., 4])  # the others keep their proportions
    r = reweight(p, keys, 3.0)
    assert torch.allclose(r[..., 2], 3 * p[..., 2]) and torch.equal(r[..., 3], p[..., 3])
    order = swap_order(7, (2,), (5,)).expand(2, 7)
    s = swap(p, order)
    assert torch.equal(s[..., 2], p[..., 5]) and torch.equal(s[..., 5], p[..., 2]) and torch.equal(s[..., 0], p[..., 0])
    # `attend` from unedited probabilities is the module's own forward
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    x, ctx = torch.randn(2, 64, attn.query_dim), torch.randn(2, 16, attn.cross_attention_dim)
    with torch.no_grad():
        assert torch.allclose(attend(attn, x, ctx, attention_probs(attn, x, ctx)), attn(x, ctx), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ patching
def _cfg_call(pipe, probes, x, ctx):
    """One bare UNet call under classifier-free guidance's layout: rows [uncond, cond]."""
    from probes.hooks import attached

    with attached(*probes), torch.no_grad():
        return pipe.unet(torch.cat([x, x]), 500, encoder_hidden_states=ctx).sample


def test_taps_write_only_the_conditional_rows_and_the_skip_half(pipe):
    """A patched skip replaces the skip half of the up ResNet's input with the source's and leaves the backbone
    half; only the conditional rows change, and the unconditional output is the unpatched one bit for bit."""
    from probes.inputs import conditioning
    from probes.patching import Patcher, SourceCache

    sites = causal.select_sites(pipe.unet, ["skip"])
    skip = sites[2]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = lambda p: torch.cat([conditioning(pipe, [""], 64, 64)["encoder_hidden_states"],  # noqa: E731
                                conditioning(pipe, [p], 64, 64)["encoder_hidden_states"]])
    cache = SourceCache(pipe.unet, sites, n_images=1)
    _cfg_call(pipe, [cache], x, cond(PROMPT))
    seen = {}
    def spy_on(module, args, out):  # a forward hook sees the input after every pre-hook (the patch) ran
        seen["x"] = args[0].clone()

    spy = pipe.unet.get_submodule(skip.path).register_forward_hook(spy_on)
    try:
        plain = _cfg_call(pipe, [], x, cond(COUNTER))
        plain_in = seen.pop("x")
        patched = _cfg_call(pipe, [Patcher(pipe.unet, cache, {site_key(skip): torch.ones(5, 1, dtype=torch.bool)}, [0])],
                            x, cond(COUNTER))
        patched_in = seen.pop("x")
    finally:
        spy.remove()
    c = skip.channels
    assert torch.equal(patched_in[1:, -c:], cache.store[(site_key(skip), 0)][0])  # the source's skip, cond row
    assert torch.equal(patched_in[1:, :-c], plain_in[1:, :-c]) and torch.equal(patched_in[:1], plain_in[:1])
    assert torch.equal(patched[:1], plain[:1]) and not torch.allclose(patched[1:], plain[1:])


def test_token_edits_touch_only_the_conditional_rows(pipe):
    from probes.inputs import conditioning
    from probes.interventions import TokenEdit

    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    ctx = torch.cat([conditioning(pipe, [""], 64, 64)["encoder_hidden_states"],
                     conditioning(pipe, [PROMPT], 64, 64)["encoder_hidden_states"]])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    keys = torch.zeros(1, 16, dtype=torch.bool)
    keys[0, 2] = True
    plain = _cfg_call(pipe, [], x, ctx)
    edited = _cfg_call(pipe, [TokenEdit(pipe.unet, "knockout", {layer: torch.ones(5, 1, dtype=torch.bool)}, keys=keys)],
                       x, ctx)
    assert torch.equal(edited[:1], plain[:1]) and not torch.allclose(edited[1:], plain[1:])



def test_patching_none_is_the_target_all_is_the_source_and_batches_are_rows(pipe):
    """"none" is the target run bit for bit, "all" and all cross-attention outputs are the source run (SD 1.x: the
    prompt enters only through attn2), the time embedding carries nothing; batched rows equal one run each; the
    UNet is left as it was."""
    procs = processors(pipe.unet)
    sites = causal.select_sites(pipe.unet, ["time_embedding", "attn2", "skip"])
    configs = configs_named(causal.configurations(sites, 3), "none", "all", "kind:attn2", "time_embedding:time_embedding",
                            site_key(sites[3]))
    items = causal.build_items("patch", [PROMPT], counterfactuals=[COUNTER], n_seeds=2)
    z_src, z = causal.patch_runs(pipe, items, sites, configs, RUN, batch=7, cache_items=1, progress=False)
    assert z.shape == (2, len(configs), 4, 16, 16)
    target = sampling.denoise(pipe, [COUNTER] * 2, [i.seed for i in items], sample_steps=3, guidance_scale=7.5,
                              output_type="latent")
    source = sampling.denoise(pipe, [PROMPT] * 2, [i.seed for i in items], sample_steps=3, guidance_scale=7.5,
                              output_type="latent")
    col = {(c.site, c.t_bin): r for r, c in enumerate(configs)}
    assert torch.equal(z[:, col["none", None]], target) and torch.allclose(z_src, source, atol=1e-4)  # batch-size rounding
    for name in ("all", "kind:attn2"):
        assert torch.allclose(z[:, col[name, None]], z_src, atol=1e-4), name
    assert torch.allclose(z[:, col["time_embedding:time_embedding", None]], target, atol=1e-4)
    one = site_key(sites[3])
    assert not torch.allclose(z[:, col[one, None]], target, atol=1e-4)  # a single attn2 moves the output
    # the same configurations one run each (batch 1) give the same latents
    _, z1 = causal.patch_runs(pipe, items[:1], sites, configs, RUN, batch=1, progress=False)
    assert torch.allclose(z1[0], z[0], atol=1e-4)
    measured = causal.samples("patch", items, configs, z, z_src)
    toward = measured.pivot_table(index="config", columns="item", values="value")
    assert toward.loc[col["none", None]].abs().max() == 0 and (toward.loc[col["all", None]] - 1).abs().max() < 1e-4
    assert hooks_left(pipe.unet) == 0 and processors(pipe.unet) == procs


def test_restore_corrupts_only_the_prompt_rows(pipe):
    """The noise reaches the word's tokens of the prompt only (not the unconditional prompt), is the same on every
    call, and restoring every site gives the clean run back."""
    ids = pipe.tokenizer(["", PROMPT], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        clean = pipe.text_encoder.get_input_embeddings()(ids)
        with corrupted(pipe, {PROMPT: 1}, seed=0):  # word 1, "red"
            noisy = pipe.text_encoder.get_input_embeddings()(ids)
            again = pipe.text_encoder.get_input_embeddings()(ids)
    assert torch.equal(noisy[0], clean[0]) and torch.equal(noisy, again)
    changed = (noisy[1] != clean[1]).any(-1).nonzero().flatten().tolist()
    assert changed == [2]  # start token, "a", then "red"
    assert hooks_left(pipe.text_encoder) == 0
    sites = causal.select_sites(pipe.unet, ["attn2"])
    configs = [c for c in causal.configurations(sites, 3) if c.t_bin is None and c.site in ("none", "all")]
    items = causal.build_items("restore", [PROMPT], word="red")
    z_src, z = causal.patch_runs(pipe, items, sites, configs, RUN, batch=4, restore_noise=3.0, progress=False)
    assert torch.allclose(z[0, 1], z_src[0], atol=1e-4) and not torch.allclose(z[0, 0], z_src[0], atol=1e-3)


def test_token_edits_leave_unedited_rows_bitwise_and_restore_the_processors(pipe):
    procs = processors(pipe.unet)
    configs = [c for c in causal.configurations(causal.select_sites(pipe.unet, ["attn2"]), 3)
               if c.t_bin is None and c.site in ("none", "all", "level:1")]
    for op in ("knockout", "reweight", "swap"):
        items = causal.build_items(op, [PROMPT], word="red", other="blue" if op == "swap" else None)
        z = causal.edit_runs(pipe, items, configs, RUN, op=op, factor=4.0, batch=8)
        plain = sampling.denoise(pipe, [PROMPT] * 3, [items[0].seed] * 3, sample_steps=3, guidance_scale=7.5,
                                 output_type="latent")  # the batch of the edited call: same rounding
        assert torch.equal(z[0, 0], plain[0]), op
        assert not torch.allclose(z[0, 1], plain[0], atol=1e-4), op
        assert processors(pipe.unet) == procs and hooks_left(pipe.unet) == 0


def test_runner_writes_the_table_and_figures(pipe, tmp_path):
    from probes.runner import run

    probe = dict(name="causal", mode="patch", counterfactual="a blue circle", counterfactuals=None,
                 direction="denoising", word=None, other=None, tokens=["word"], factor=2.0, noise=3.0, pairs=None, n_pairs=4,
                 n_seeds=2, kinds=["resnet", "attn2"], sites=["down.1.attn.0", "mid.res.1"], singles=True, groups=True,
                 batch=16, cache_items=8, top_k=2)
    cfg = dict(model=dict(name="random", path="random", device="cpu", dtype="float32"), prompt="a red circle",
               prompts=None, seed=0, sample_steps=3, guidance_scale=7.5, height=None, width=None, timestep_bins=3,
               out=str(tmp_path), probe=probe)
    res = run(cfg, pipe=pipe)
    for f in ("causal.csv", "samples.csv", "causal.png", "causal.pdf", "causal_sites.png", "strongest.png",
              "image.png", "result.json"):
        assert (tmp_path / f).exists(), f
    table = pd.read_csv(tmp_path / "causal.csv")
    assert list(table.columns) == ["mode", "direction", "site", "label", "kind", "level", "resolution", "t_bin",
                                   "t_lo", "t_hi", "measure", "value", "ci_lo", "ci_hi", "ci_method", "n"]
    # the model-agnostic measure counts every item; the evaluator's (shapes tokenizer) only items it can read
    latent = table[table.measure == "latent_toward_source"]
    assert len(latent) == res["n_configurations"] and (latent.n == 2).all()
    assert set(table.measure) <= {"latent_toward_source", "attribute_flip"}
    attn = latent[latent.site == "down_blocks.1.attentions.0.transformer_blocks.0.attn2"]
    assert set(attn.resolution) == {"8x8"} and set(attn.level) == {1} and set(attn.t_bin.astype(str)) == {"0", "1", "2", "all"}
    # two sites: none moves nothing, both together move the output partly (all of the way needs the output's path)
    assert res["none"]["value"] == 0 and 0 < abs(res["all"]["value"]) < 1 and res["n_configurations"] == 1 + 2 * 4 + 4 * 4
    from probes.causal_runner import primary_measure

    assert json.loads((tmp_path / "result.json").read_text())["measure"] == primary_measure(table, "patch")


# ------------------------------------------------------------------------------------------------------ tiny_sd
@pytest.fixture(scope="module")
def tiny():
    from foundation.loading import load_pipeline

    p = load_pipeline("tiny_sd", device="cpu", dtype="float32")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.slow
def test_ground_truth_on_tiny_sd(tiny, tmp_path):
    """Generated colour pairs: patching every site at every bin gives the source's colour on every counted item,
    patching nothing never does; knocking the colour word (and the later positions that carry it) out of every
    cross-attention removes the colour: its accuracy falls to about chance (1/6)."""
    from probes.runner import run

    base = dict(model=dict(name="tiny_sd", path="tiny_sd", device="cpu", dtype="float32"), prompt="a red circle",
                prompts=None, seed=0, sample_steps=8, guidance_scale=7.5, height=None, width=None, timestep_bins=2)
    probe = dict(name="causal", mode="patch", counterfactual=None, counterfactuals=None, direction="denoising",
                 word=None, other=None, tokens=["word"], factor=2.0, noise=3.0, pairs="colour", n_pairs=8, n_seeds=1,
                 kinds=["resnet", "attn2"], sites=None, singles=False, groups=True, batch=64, cache_items=8, top_k=2)
    run({**base, "out": str(tmp_path / "p"), "probe": probe}, pipe=tiny)
    t = pd.read_csv(tmp_path / "p" / "causal.csv")
    flip = t[(t.measure == "attribute_flip") & (t.t_bin.astype(str) == "all")].set_index("site")
    assert flip.n["all"] >= 4  # items where both unpatched runs read their own colour
    assert flip.value["all"] == 1 and flip.value["none"] == 0 and flip.value["kind:attn2"] == 1
    # the colour word and every later position (the causal text encoder carries the word into them)
    ko = run({**base, "out": str(tmp_path / "k"), "probe": {**probe, "mode": "knockout",
                                                            "tokens": ["word", "later_words", "end", "padding"]}},
             pipe=tiny)
    t = pd.read_csv(tmp_path / "k" / "causal.csv")
    kept = t[(t.measure == "attribute_kept") & (t.t_bin.astype(str) == "all")].set_index("site")
    assert kept.value["none"] == 1 and kept.n["all"] >= 6 and kept.value["all"] <= 0.4 and ko["mode"] == "knockout"
