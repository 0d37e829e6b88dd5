"""The UNet site map (`foundation.sites`) against the real forward pass of tiny_sd's and SDXL's layouts: every skip's
source is the tensor its up ResNet concatenates, levels give the resolutions the modules run at, every GroupNorm and
attention module is listed once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation import sites, skips
from foundation.conditioning import encode


@pytest.fixture(scope="module", params=["tiny_sd", "sdxl"])
def layout(request, pipe):
    if request.param == "tiny_sd":
        return pipe
    from tiny_sd.testing import random_sdxl_pipeline

    return random_sdxl_pipeline(seed=0)


def _forward(p, hooks: dict, latent_side: int = 16):
    """One UNet call on a (1, 4, s, s) latent with `hooks` {path: (kind, fn)} attached; all removed after."""
    unet = p.unet
    handles = []
    for path, (kind, fn) in hooks.items():
        m = unet.get_submodule(path)
        handles.append(m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn))
    try:
        states, added = encode(p, ["a red circle"], latent_side * 4, latent_side * 4)
        with torch.no_grad():
            unet(torch.randn(1, 4, latent_side, latent_side, generator=torch.Generator().manual_seed(0)), 500,
                 encoder_hidden_states=states, **({"added_cond_kwargs": added} if added else {}))
    finally:
        for h in handles:
            h.remove()


def test_every_skip_source_is_the_tensor_its_up_resnet_concatenates(layout):
    found = sites.skips(layout.unet)
    assert len(found) == sum(len(b.resnets) for b in layout.unet.up_blocks)
    stored, received = {}, {}
    hooks = {}
    for s in found:
        hooks[s.source] = ("post", lambda m, a, out, k=s.source: stored.__setitem__(
            k, out[0] if isinstance(out, tuple) else getattr(out, "sample", out)))
    for s in found:
        hooks[s.path] = ("pre", lambda m, a, s=s: received.__setitem__(s.name, skips.split(a[0], s)[1]))
    _forward(layout, hooks)
    for s in found:
        assert torch.equal(received[s.name], stored[s.source]), s.name
    assert [s.name for s in found] == [f"up_blocks.{i}.resnets.{j}" for i, b in enumerate(layout.unet.up_blocks)
                                       for j in range(len(b.resnets))]


def test_levels_are_the_resolutions_the_modules_run_at(layout):
    seen = {}
    resnets = sites.sites(layout.unet, "resnet")
    _forward(layout, {s.path: ("pre", lambda m, a, s=s: seen.__setitem__(s.path, a[0].shape[-1])) for s in resnets})
    assert seen == {s.path: sites.side(16, s.level) for s in resnets}
    assert sites.side(15, 1) == 8 and sites.side(15, 2) == 4  # stride-2 convs with padding 1: ceil halving


def test_norms_and_attention_are_listed_once_each(layout):
    unet = layout.unet
    groupnorms = [n for n, m in unet.named_modules() if isinstance(m, nn.GroupNorm)]
    assert sorted(s.path for s in sites.sites(unet, "norm")) == sorted(groupnorms)
    for kind in ("attn1", "attn2"):
        modules = [n for n, m in unet.named_modules() if n.endswith(kind) and hasattr(m, "set_processor")]
        assert sorted(s.path for s in sites.sites(unet, kind)) == sorted(modules)
    all_sites = sites.sites(unet)
    assert len({(s.kind, s.path) for s in all_sites}) == len(all_sites)
    for kind in sites.KINDS:
        shorts = [s.short for s in sites.sites(unet, kind)]
        assert len(set(shorts)) == len(shorts), kind


def test_lookup_errors_name_the_valid_sites(pipe):
    assert sites.site(pipe.unet, "up_blocks.2.resnets.2", "skip").source == "conv_in"
    assert sites.levels(pipe.unet, "attn2") == [0, 1, 2]
    with pytest.raises(sites.SiteError, match="valid: up_blocks.0.resnets.0"):
        sites.site(pipe.unet, "up_blocks.9.resnets.0", "skip")
    with pytest.raises(sites.SiteError, match="unknown site kind"):
        sites.sites(pipe.unet, "conv")
    with pytest.raises(sites.SiteError, match="not a diffusers UNet"):
        sites.sites(nn.Linear(2, 2))


def test_short_names_from_paths_alone_match_the_site_map(layout):
    """Tables that hold only module paths (maps.csv) get the site map's short names, SDXL's deep transformers too."""
    unet = layout.unet
    for kind in ("time_embedding", "resnet", "transformer", "attn1", "attn2", "norm"):
        found = sites.sites(unet, kind)
        assert sites.short_names([s.path for s in found]) == {s.path: s.short for s in found}, kind
    assert sites.short_names(["down_blocks.0.attentions.1.transformer_blocks.0.attn2", "L0"]) == {
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2": "down.0.attn.1", "L0": "L0"}
