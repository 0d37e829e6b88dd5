"""Seeded, batched sampling with paired seeds: image i of seed k gets the same initial noise in every variant.

Each image has its own `torch.Generator` (diffusers accepts one per image), so its noise does not depend on
the batch size or on the other images in the batch; only the UNet differs between variants. Batches have a fixed
composition (batch b holds images [b*B, (b+1)*B)), so a distributed job that deals batches out to its ranks
computes exactly what one process computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from metrics.score import image_seed, paired_latents


def image_seeds(seed: int, n: int) -> list[int]:
    """Per-image noise seeds of job seed `seed`: disjoint across job seeds, identical across variants."""
    return [image_seed(seed, i) for i in range(n)]


def with_unet(pipe, unet):
    """A new pipeline object sharing every component of `pipe` except the UNet."""
    from .loading import _quiet

    with _quiet():  # no safety-checker notice per variant
        return type(pipe)(**{**pipe.components, "unet": unet})


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


@torch.no_grad()
def sample_batches(pipe, unet, prompts: list[str], seeds: list[int], *, steps: int, cfg_scale: float,
                   batch_size: int = 16, resolution: int | None = None, batches=None,
                   progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (b, float images (n_b, 3, R, R) in [0, 1] on the CPU) for batch indices `batches` (default: all),
    sampled with `unet` in `pipe` at `resolution` (default: the pipeline's)."""
    p = with_unet(pipe, unet.eval())
    p.set_progress_bar_config(disable=True)
    device = p.unet.device
    todo = list(range(n_batches(len(prompts), batch_size)) if batches is None else batches)
    for b in tqdm(todo, desc="sample", disable=not progress, dynamic_ncols=True):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        latents = paired_latents(p, seeds[sl], resolution, resolution).to(device, p.unet.dtype)
        imgs = p(prompts[sl], num_inference_steps=steps, guidance_scale=cfg_scale, latents=latents,
                 height=resolution, width=resolution, output_type="pt").images
        yield b, imgs.float().cpu()


def sample(pipe, unet, prompts: list[str], seeds: list[int], *, steps: int, cfg_scale: float,
           batch_size: int = 16, resolution: int | None = None, progress: bool = True) -> torch.Tensor:
    """All images (N, 3, R, R) in [0, 1] on the CPU (small N: a job streams `sample_batches` instead)."""
    return torch.cat([x for _, x in sample_batches(pipe, unet, prompts, seeds, steps=steps, cfg_scale=cfg_scale,
                                                   batch_size=batch_size, resolution=resolution,
                                                   progress=progress)])
