"""The UNet site map: every place of a diffusers `UNet2DConditionModel` that a probe reads or a surgery op edits,
listed once with its module path, kind, block, level and a short name.

Levels index resolution: down block i runs at level i, the mid block at the last level, up block j at
n - 1 - j (n down blocks), so level 0 is the full latent resolution (`side`). A skip is named by the up
ResNet that concatenates it (`up_blocks.2.resnets.0`), the name surgery configs, probe tables and figures share;
its `source` is the down-path output the encoder stored (conv_in, a down ResNet or transformer, a downsampler).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

KINDS = ("time_embedding", "resnet", "transformer", "attn1", "attn2", "norm", "skip")


class SiteError(ValueError):
    """The model is not a diffusers UNet of the layout this map knows, or a site name does not exist."""


@dataclass(frozen=True)
class Site:
    path: str  # module path; for a skip, the up ResNet that concatenates it
    kind: str  # one of KINDS
    block: str  # "down", "mid", "up", or "" for sites outside the blocks (time embedding, output norm)
    level: int  # resolution index, 0 = full latent resolution
    short: str  # compact label for tables and figures: "down.1.attn.0", "up.2.res.1", "skip up.2.res.0"
    source: str | None = None  # skips: the stored down-path output
    channels: int | None = None  # skips: channels of the skip half (the last `channels` of the concatenation)

    @property
    def name(self) -> str:
        return self.path


def side(latent_side: int, level: int) -> int:
    """Grid side at `level` for a latent of side `latent_side`: each downsampler is a stride-2 conv with padding 1,
    so every level takes ceil(side / 2)."""
    for _ in range(level):
        latent_side = -(-latent_side // 2)
    return latent_side


def short_names(paths) -> dict[str, str]:
    """`Site.short` of each module path, from the paths alone (tables such as maps.csv hold paths, not a UNet).

    As in `sites()`, a transformer layer's index is kept only when the paths show more than one layer of that
    transformer; a path of no known kind is its own name. (A skip is addressed by its up ResNet's path: this gives
    the ResNet's name.)"""
    paths = list(paths)
    layer = re.compile(r"^(.*)\.transformer_blocks\.(\d+)\.(attn[12])$")
    depth: dict[str, set[str]] = {}
    for p in paths:
        if m := layer.match(p):
            depth.setdefault(m.group(1), set()).add(m.group(2))
    out = {}
    for p in paths:
        m = layer.match(p)
        base = m.group(1) if m else p
        short = {"time_embedding": "temb", "conv_norm_out": "out.norm"}.get(base) or _short_block(base).replace(
            ".resnets.", ".res.").replace(".attentions.", ".attn.")
        if m:
            short += (f".{m.group(2)}" if len(depth[base]) > 1 else "") + (".self" if m.group(3) == "attn1" else "")
        out[p] = short
    return out


def _blocks(unet: nn.Module) -> list[tuple[str, str, int, nn.Module]]:
    """(path, block kind, level, module) of the down, mid and up blocks, in forward order."""
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        raise SiteError(f"{type(unet).__name__} has no down_blocks/up_blocks: not a diffusers UNet2DConditionModel")
    n = len(unet.down_blocks)
    out = [(f"down_blocks.{i}", "down", i, b) for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        out.append(("mid_block", "mid", n - 1, unet.mid_block))
    out += [(f"up_blocks.{j}", "up", n - 1 - j, b) for j, b in enumerate(unet.up_blocks)]
    return out


def _short_block(path: str) -> str:
    return path.replace("down_blocks.", "down.").replace("up_blocks.", "up.").replace("mid_block", "mid")


def skips(unet: nn.Module) -> list[Site]:
    """Every long skip, in the order the decoder consumes them: the encoder pushes conv_in's output, each down
    ResNet's (after its transformer in a cross-attention block) and each downsampler's on a stack; each up ResNet
    pops one and concatenates it after the backbone features."""
    blocks = _blocks(unet)
    stack = [("conv_in", unet.conv_in.out_channels)]
    for path, kind, _, blk in blocks:
        if kind != "down":
            continue
        attns = getattr(blk, "attentions", None)
        for j, res in enumerate(blk.resnets):
            stack.append((f"{path}.attentions.{j}" if attns else f"{path}.resnets.{j}", res.out_channels))
        if getattr(blk, "downsamplers", None):
            stack.append((f"{path}.downsamplers.0", blk.resnets[-1].out_channels))
    out = []
    for path, kind, level, blk in blocks:
        if kind != "up":
            continue
        for j, res in enumerate(blk.resnets):
            if not stack:
                raise SiteError("more up ResNets than stored down outputs: unexpected UNet layout")
            source, ch = stack.pop()
            if res.in_channels <= ch:
                raise SiteError(f"{path}.resnets.{j} takes {res.in_channels} channels, no room for a {ch}-channel "
                                "skip: unexpected UNet layout")
            out.append(Site(f"{path}.resnets.{j}", "skip", "up", level, f"skip {_short_block(path)}.res.{j}",
                            source=source, channels=ch))
    if stack:
        raise SiteError(f"{len(stack)} down outputs are never consumed: unexpected UNet layout")
    return out


def _block_sites(path: str, block: str, level: int, blk: nn.Module) -> list[Site]:
    short = _short_block(path)
    out = []
    for j, res in enumerate(getattr(blk, "resnets", None) or []):
        out.append(Site(f"{path}.resnets.{j}", "resnet", block, level, f"{short}.res.{j}"))
        out += [Site(f"{path}.resnets.{j}.{n}", "norm", block, level, f"{short}.res.{j}.{n}")
                for n in ("norm1", "norm2") if isinstance(getattr(res, n, None), nn.GroupNorm)]
    for j, tr in enumerate(getattr(blk, "attentions", None) or []):
        tpath, tshort = f"{path}.attentions.{j}", f"{short}.attn.{j}"
        out.append(Site(tpath, "transformer", block, level, tshort))
        if isinstance(getattr(tr, "norm", None), nn.GroupNorm):
            out.append(Site(f"{tpath}.norm", "norm", block, level, f"{tshort}.norm"))
        layers = getattr(tr, "transformer_blocks", None) or []
        for k, layer in enumerate(layers):
            label = tshort if len(layers) == 1 else f"{tshort}.{k}"
            for a in ("attn1", "attn2"):
                if getattr(layer, a, None) is not None:
                    out.append(Site(f"{tpath}.transformer_blocks.{k}.{a}", a, block, level,
                                    f"{label}" + (".self" if a == "attn1" else "")))
    return out


def sites(unet: nn.Module, kind: str | None = None) -> list[Site]:
    """Every site of `unet` in forward order (skips after the blocks), or only those of `kind`."""
    if kind is not None and kind not in KINDS:
        raise SiteError(f"unknown site kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind == "skip":  # the skip probes and surgery ask for these alone, once per attach
        return skips(unet)
    out = [Site("time_embedding", "time_embedding", "", 0, "temb")] if hasattr(unet, "time_embedding") else []
    for path, block, level, blk in _blocks(unet):
        out += _block_sites(path, block, level, blk)
    if isinstance(getattr(unet, "conv_norm_out", None), nn.GroupNorm):
        out.append(Site("conv_norm_out", "norm", "", 0, "out.norm"))
    out += skips(unet)
    return [s for s in out if kind is None or s.kind == kind]


def levels(unet: nn.Module, kind: str) -> list[int]:
    """The levels holding at least one site of `kind`, finest first (a UNet need not be symmetric)."""
    return sorted({s.level for s in sites(unet, kind)})


def site(unet: nn.Module, path: str, kind: str | None = None) -> Site:
    """The site at `path` (of `kind`, when paths are shared: a skip and its up ResNet), or a SiteError listing
    the valid names."""
    found = [s for s in sites(unet, kind) if s.path == path]
    if not found:
        valid = [s.path for s in sites(unet, kind)]
        raise SiteError(f"no {kind or 'site'} named {path!r}; valid: {', '.join(valid)}")
    return found[0]
