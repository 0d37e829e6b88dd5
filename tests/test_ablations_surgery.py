"""Each surgery op changes exactly what it claims, returns a new UNet and leaves the base untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from ablations import blocks, depth, norms, skips, surgery
from foundation.skips import edit as skip_edit
from tiny_sd import arch


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    unet = arch.build_unet().eval()
    # Non-trivial affine parameters, so "carried over" is a real check.
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return unet


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 77, arch.TEXT_DIM, generator=g))


@pytest.fixture(scope="module")
def base_out(base, inputs):
    with torch.no_grad():
        return base(*inputs).sample


def _out(unet, inputs):
    with torch.no_grad():
        return unet.eval()(*inputs).sample


@pytest.fixture
def untouched(base):
    """Asserts after the test that the base's state_dict and module types did not change."""
    before = {k: v.clone() for k, v in base.state_dict().items()}
    types = [type(m) for m in base.modules()]
    yield
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert types == [type(m) for m in base.modules()]


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("kind,cls", [("layernorm", nn.GroupNorm), ("layernorm2d", norms.LayerNorm2d),
                                      ("instancenorm", nn.InstanceNorm2d), ("rmsnorm", norms.PixelNorm2d),
                                      ("batchnorm", nn.BatchNorm2d), ("none", nn.Identity)])
def test_norm_swap_types_affine_and_output(base, inputs, base_out, untouched, kind, cls):
    new = norms.swap_norms(base, kind)
    assert new is not base
    old = norms.find_norms(base, norms.TARGETS)
    for name, gn in old.items():
        m = new.get_submodule(name)
        assert type(m) is cls, name
        if kind != "none":
            assert torch.equal(m.weight, gn.weight) and torch.equal(m.bias, gn.bias)
        if kind == "layernorm":
            assert m.num_groups == 1
    # Only the selected norms changed: every other parameter is identical.
    sd_new, sd_old = new.state_dict(), base.state_dict()
    for k, v in sd_old.items():
        if not any(k.startswith(n + ".") for n in old):
            assert torch.equal(sd_new[k], v), k
    assert not torch.allclose(_out(new, inputs), base_out)


def test_norm_targets_are_selective(base, untouched):
    new = norms.swap_norms(base, "rmsnorm", targets=["attention"])
    for name, m in base.named_modules():
        if isinstance(m, nn.GroupNorm):
            expected = norms.PixelNorm2d if norms.target_of(name) == "attention" else nn.GroupNorm
            assert type(new.get_submodule(name)) is expected, name
    assert type(new.conv_norm_out) is nn.GroupNorm


def test_groupnorm_same_groups_is_identity_and_g_changes(base, inputs, base_out, untouched):
    assert torch.equal(_out(norms.swap_norms(base, "groupnorm"), inputs), base_out)
    g4 = norms.swap_norms(base, "groupnorm", groups=4)
    assert g4.conv_norm_out.num_groups == 4
    assert not torch.allclose(_out(g4, inputs), base_out)


def test_layernorm_equals_groupnorm1_and_layernorm2d_is_per_pixel():
    x = torch.randn(2, 8, 5, 5)
    gn = nn.GroupNorm(1, 8, affine=False)
    ln = nn.LayerNorm([8, 5, 5], elementwise_affine=False)
    assert torch.allclose(gn(x), ln(x), atol=1e-5)
    y = norms.LayerNorm2d(8, elementwise_affine=False)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 5, 5), atol=1e-5)
    p = norms.PixelNorm2d(8, affine=False)(x)
    assert torch.allclose(p.pow(2).mean(1), torch.ones(2, 5, 5), atol=1e-3)


@pytest.mark.parametrize("kw,match", [(dict(kind="weightnorm"), "valid: groupnorm, layernorm"),
                                      (dict(kind="layernorm", targets=["mlp"]), "valid: resnet, attention"),
                                      (dict(kind="groupnorm", groups=7), "does not divide"),
                                      (dict(kind="rmsnorm", groups=4), "only applies"),
                                      (dict(kind="groupnorm", groups="4"), "an integer >= 1, got '4'")])
def test_norm_validation_lists_choices(base, kw, match):
    with pytest.raises(ValueError, match=match):
        norms.swap_norms(base, **kw)


# ---------------------------------------------------------------- skips / FreeU

def test_skip_names_cover_all_up_resnets(base):
    names = skips.skip_names(base)
    assert len(names) == sum(len(b.resnets) for b in base.up_blocks) == 9
    assert names["up_blocks.2.resnets.0"] == 0 and names["up_blocks.0.resnets.0"] == 2


@pytest.mark.parametrize("mode,scale", [("zero", 0.0), ("mean", 0.0), ("scale", 0.5)])
def test_skip_edit_changes_output_and_only_adds_the_edit(base, inputs, base_out, untouched, mode, scale):
    new = skips.edit_skips(base, mode, levels=[0], scale=scale)
    assert isinstance(new.up_blocks[2].skip_edit, skips.SkipEdit)
    assert not hasattr(new.up_blocks[0], "skip_edit")
    assert set(new.up_blocks[2].skip_edit.edits) == {0, 1, 2}
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), base.state_dict().values()))
    assert not torch.allclose(_out(new, inputs), base_out)


def test_skip_scale_one_is_identity_and_zero_scale_equals_zero(base, inputs, base_out):
    assert torch.equal(_out(skips.edit_skips(base, "scale", scale=1.0), inputs), base_out)
    z = _out(skips.edit_skips(base, "zero", skips=["up_blocks.1.resnets.2"]), inputs)
    s0 = _out(skips.edit_skips(base, "scale", skips=["up_blocks.1.resnets.2"], scale=0.0), inputs)
    assert torch.allclose(z, s0) and not torch.allclose(z, base_out)


def test_skip_edit_reaches_the_right_tensor(base, inputs):
    """Zeroing skip j of a block must zero exactly the skip channels its ResNet receives."""
    seen = {}
    new = skips.edit_skips(base, "zero", skips=["up_blocks.2.resnets.1"])
    res = new.up_blocks[2].resnets[1]
    h = res.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone()))
    _out(new, inputs)
    h.remove()
    skip_ch = base.up_blocks[2].resnets[0].conv2.out_channels  # the block's hidden width comes first
    assert seen["x"][:, skip_ch:].abs().max() == 0
    assert seen["x"][:, :skip_ch].abs().max() > 0


def test_skip_mean_keeps_channel_means():
    x = torch.randn(2, 3, 4, 4)
    y = skip_edit(x, "mean")
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3))) and torch.allclose(y.std((2, 3)), torch.zeros(2, 3))


@pytest.mark.parametrize("kw,match", [(dict(mode="drop"), "valid: zero, mean, scale"),
                                      (dict(mode="zero", skips=["up_blocks.9.resnets.0"]), "valid: 'all'"),
                                      (dict(mode="zero", levels=[5]), r"valid: \[0, 1, 2\]")])
def test_skip_validation(base, kw, match):
    with pytest.raises(ValueError, match=match):
        skips.edit_skips(base, **kw)


def test_freeu_is_diffusers_freeu_on_a_copy(base, inputs, base_out, untouched):
    new = skips.freeu(base, b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    assert (new.up_blocks[0].freeu.b, new.up_blocks[0].freeu.s, new.up_blocks[1].freeu.s) == (1.5, 0.9, 0.2)
    assert not hasattr(new.up_blocks[2], "freeu") and not hasattr(base.up_blocks[0], "freeu")
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), base.state_dict().values()))
    out = _out(new, inputs)
    ref = copy.deepcopy(base)
    ref.enable_freeu(b1=1.5, b2=1.6, s1=0.9, s2=0.2)  # for nonzero factors ours must be diffusers' FreeU
    assert torch.allclose(out, _out(ref, inputs), atol=1e-6)
    assert not torch.allclose(out, base_out)
    assert torch.equal(_out(copy.deepcopy(new), inputs), out)  # the hooks follow the copy
    ident = skips.freeu(base, b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    assert torch.allclose(_out(ident, inputs), base_out, atol=1e-5)


def test_freeu_zero_factor_is_applied_not_ignored(base, inputs, base_out):
    """diffusers' enable_freeu switches FreeU off when any factor is 0, so the freeu sweep's s_zero variant was
    bit-identical to the baseline. Here s=0 is applied: the skip's mean goes, its six nearest bins are halved."""
    from omegaconf import OmegaConf

    from configs import __file__ as configs_init

    sweep = OmegaConf.load(Path(configs_init).parent / "sweep" / "freeu.yaml")
    s_zero = surgery.apply(base, OmegaConf.to_container(sweep.variants.s_zero))
    s_one = surgery.apply(base, {"op": "freeu", "b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0})
    out0 = _out(s_zero, inputs)
    assert not torch.allclose(out0, base_out, atol=1e-4)
    assert not torch.allclose(out0, _out(s_one, inputs), atol=1e-4)
    # The skip ResNet 0 of up block 1 receives, against the raw one (the down path is untouched by FreeU).
    seen = {}
    raw = base.up_blocks[1].register_forward_pre_hook(
        lambda m, a, kw: seen.update(raw=kw["res_hidden_states_tuple"][-1].clone()), with_kwargs=True)
    _out(base, inputs)
    raw.remove()
    block = s_zero.up_blocks[1]
    h = block.resnets[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone()))
    _out(s_zero, inputs)
    h.remove()
    filtered = seen["x"][:, -block.freeu.skip_channels[0]:]  # the ResNet's input is cat([backbone, skip])
    factor = torch.ones(filtered.shape[-2:])
    factor[0, 0] = 0.0  # DC: the per-channel mean, times s
    for ky, kx in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1)):
        factor[ky, kx] = 0.5  # (1 + s) / 2
    fft = lambda t: torch.fft.fftn(t, dim=(-2, -1))  # noqa: E731
    assert torch.allclose(fft(filtered), fft(seen["raw"]) * factor, atol=1e-4)
    assert filtered.mean(dim=(2, 3)).abs().max() < 1e-5 < seen["raw"].mean(dim=(2, 3)).abs().max()
    b_zero = _out(surgery.apply(base, {"op": "freeu", "b1": 0.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}), inputs)
    assert not torch.allclose(b_zero, base_out, atol=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "abc", -1.0])
def test_freeu_factors_must_be_finite_non_bool_numbers(base, bad):
    spec = {"op": "freeu", "b1": 1.0, "b2": 1.0, "s1": bad, "s2": 0.2}
    with pytest.raises(ValueError, match="FreeU factor s1 must be a finite number >= 0"):
        surgery.validate(base, spec)
    with pytest.raises(ValueError, match="FreeU factor s1 must be a finite number >= 0"):
        skips.freeu(base, b1=1.0, b2=1.0, s1=bad, s2=0.2)


def test_freeu_refuses_a_base_with_freeu_already_enabled(base):
    twice = copy.deepcopy(base)
    twice.enable_freeu(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    with pytest.raises(ValueError, match="already has FreeU"):
        surgery.validate(twice, {"op": "freeu", "b1": 1.0, "b2": 1.0, "s1": 0.5, "s2": 0.5})


# ---------------------------------------------------------------- depth / attention

def test_truncate_depth(base, inputs, base_out, untouched):
    assert depth.depth(base) == 1
    same = depth.truncate_depth(base, 1)
    assert torch.equal(_out(same, inputs), base_out)
    k0 = depth.truncate_depth(base, 0)
    assert all(len(m.transformer_blocks) == 0 for m in depth.spatial_transformers(k0).values())
    assert all(len(m.transformer_blocks) == 1 for m in depth.spatial_transformers(base).values())
    assert not torch.allclose(_out(k0, inputs), base_out)
    with pytest.raises(ValueError, match=r"valid: 0\.\.1"):
        depth.truncate_depth(base, 2)


def test_build_depth_for_scratch(base, inputs):
    deep = depth.build_depth(base, 2)
    assert all(len(m.transformer_blocks) == 2 for m in depth.spatial_transformers(deep).values())
    assert _out(deep, inputs).shape == (2, 4, 16, 16)


@pytest.mark.parametrize("which", ["attn1", "attn2"])
def test_attention_bypass(base, inputs, base_out, untouched, which):
    new = depth.bypass_attention(base, which)
    procs = new.attn_processors
    zeroed = {k for k, p in procs.items() if isinstance(p, depth.ZeroAttnProcessor)}
    assert zeroed and all(k.endswith(f"{which}.processor") for k in zeroed)
    assert len(zeroed) == len(depth.spatial_transformers(base))
    assert not any(isinstance(p, depth.ZeroAttnProcessor) for p in base.attn_processors.values())
    assert not torch.allclose(_out(new, inputs), base_out)


def test_attention_bypass_is_exactly_attention_removal(base, inputs):
    """attn2 bypass == the same model whose attn2 output projection is zero."""
    by = _out(depth.bypass_attention(base, "attn2"), inputs)
    ref = surgery.apply(base, {"op": "none"})
    with torch.no_grad():
        for n, m in ref.named_modules():
            if n.endswith("attn2"):
                m.to_out[0].weight.zero_()
                m.to_out[0].bias.zero_()
    assert torch.allclose(by, _out(ref, inputs), atol=1e-6)


# ---------------------------------------------------------------- blocks (BK-SDM)

def test_bksdm_pairs_removal(base, inputs, untouched):
    new = blocks.remove_blocks(base, ["pairs"])
    assert [len(b.resnets) for b in new.down_blocks] == [1, 1, 1]
    assert [len(b.resnets) for b in new.up_blocks] == [2, 2, 2]
    assert new.mid_block is not None
    # Kept pairs carry the teacher's weights: down pair 0; up pairs 0 and 2 (BK-SDM).
    assert torch.equal(new.down_blocks[0].resnets[0].conv1.weight, base.down_blocks[0].resnets[0].conv1.weight)
    assert torch.equal(new.up_blocks[1].resnets[1].conv1.weight, base.up_blocks[1].resnets[2].conv1.weight)
    assert torch.equal(new.up_blocks[1].attentions[1].proj_in.weight, base.up_blocks[1].attentions[2].proj_in.weight)
    assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in base.parameters())
    assert _out(new, inputs).shape == (2, 4, 16, 16)


def test_bksdm_mid_removal(base, inputs, untouched):
    new = blocks.remove_blocks(base, ["mid"])
    assert new.mid_block is None
    keys = [k for k in base.state_dict() if not k.startswith("mid_block.")]
    assert all(torch.equal(new.state_dict()[k], base.state_dict()[k]) for k in keys)
    assert _out(new, inputs).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="valid: pairs, mid"):
        blocks.remove_blocks(base, ["encoder"])


# ---------------------------------------------------------------- dispatcher

def test_surgery_dispatch_and_validation(base, inputs, base_out, untouched):
    assert torch.equal(_out(surgery.apply(base, {"op": "none"}), inputs), base_out)
    new = surgery.apply(base, {"op": "norms", "kind": "layernorm2d"})
    assert isinstance(new.conv_norm_out, norms.LayerNorm2d)
    with pytest.raises(ValueError, match="valid: none, norms, skips"):
        surgery.validate(base, {"op": "prune"})
    with pytest.raises(ValueError, match="valid: kind, targets, groups"):
        surgery.validate(base, {"op": "norms", "kind": "layernorm", "group": 4})
    assert surgery.resolve({"op": "depth", "k": 0}) == {"op": "depth", "k": 0}
    # selections that would silently build the baseline, and unusable numbers, are refused before any compute
    names = skips.skip_names(base)
    top = next(n for n, lv in names.items() if lv == 0)
    with pytest.raises(ValueError, match="is at levels"):
        surgery.validate(base, {"op": "skips", "mode": "zero", "skips": [top], "levels": [1]})
    for bad in ("abc", float("nan"), True):
        with pytest.raises(ValueError, match="finite number"):
            surgery.validate(base, {"op": "skips", "mode": "scale", "scale": bad})
    with pytest.raises(ValueError, match="unknown spatial transformers"):
        surgery.validate(base, {"op": "attention", "which": "attn2", "modules": []})
