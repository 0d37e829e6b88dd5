"""Seeded sampling, written once for the probes, the ablation jobs and the metrics.

Every image has its own `torch.Generator` seeded from (run seed, image index), drawn on the CPU, so image i gets
the same initial noise whatever else is in its batch, whatever the batch size, device or dtype; between variants
only the UNet differs (paired comparisons). Batches have a fixed composition (batch b holds images
[b*B, (b+1)*B)), so a distributed job that deals batches out to its ranks computes what one process computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .loading import quiet
from .pipeline import native_resolution


def image_seed(seed: int, index: int) -> int:
    """Per-image generator seed: identical across variants (paired comparisons), distinct across images."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def image_seeds(seed: int, n: int, first: int = 0) -> list[int]:
    """Seeds of images first .. first + n - 1 of run seed `seed`: disjoint across run seeds."""
    return [image_seed(seed, i) for i in range(first, first + n)]


def image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels: the given ones, else the pipeline's native resolution."""
    default = native_resolution(pipe)
    return int(height or default), int(width or default)


def paired_latents(pipe, seeds: list[int], height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Initial noise (N, C, h, w), one CPU generator per image seed, in float32 on the CPU (a CUDA generator
    would give other numbers than the CPU one)."""
    f = pipe.vae_scale_factor
    h, w = image_size(pipe, height, width)
    shape = (1, pipe.unet.config.in_channels, h // f, w // f)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def with_unet(pipe, unet):
    """A new pipeline object sharing every component of `pipe` except the UNet."""
    with quiet():  # no safety-checker notice per variant
        return type(pipe)(**{**pipe.components, "unet": unet})


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


@torch.no_grad()
def denoise(pipe, prompts: list[str], seeds: list[int], *, sample_steps: int, guidance_scale: float,
            height: int | None = None, width: int | None = None, output_type: str = "pt"):
    """One pipeline call from the seeds' initial noise: images (N, 3, H, W) in [0, 1] for "pt", the final latents
    for "latent"."""
    latents = paired_latents(pipe, seeds, height, width).to(pipe.unet.device, pipe.unet.dtype)
    return pipe(list(prompts), num_inference_steps=sample_steps, guidance_scale=guidance_scale, latents=latents,
                height=height, width=width, output_type=output_type).images


def sample_batches(pipe, unet, prompts: list[str], seeds: list[int], *, sample_steps: int, guidance_scale: float,
                   batch_size: int = 16, resolution: int | None = None, batches=None,
                   progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (b, float images (n_b, 3, R, R) in [0, 1] on the CPU) for batch indices `batches` (default: all),
    sampled with `unet` in `pipe` at `resolution` (default: the pipeline's)."""
    p = with_unet(pipe, unet.eval())
    p.set_progress_bar_config(disable=True)
    todo = list(range(n_batches(len(prompts), batch_size)) if batches is None else batches)
    for b in tqdm(todo, desc="sample", disable=not progress, dynamic_ncols=True):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        imgs = denoise(p, prompts[sl], seeds[sl], sample_steps=sample_steps, guidance_scale=guidance_scale,
                       height=resolution, width=resolution)
        yield b, imgs.float().cpu()


def sample(pipe, unet, prompts: list[str], seeds: list[int], *, sample_steps: int, guidance_scale: float,
           batch_size: int = 16, resolution: int | None = None, progress: bool = True) -> torch.Tensor:
    """All images (N, 3, R, R) in [0, 1] on the CPU (small N: a job streams `sample_batches` instead)."""
    return torch.cat([x for _, x in sample_batches(pipe, unet, prompts, seeds, sample_steps=sample_steps,
                                                   guidance_scale=guidance_scale, batch_size=batch_size,
                                                   resolution=resolution, progress=progress)])


def generate(pipe, prompts: list[str], seeds: list[int], *, sample_steps: int, guidance_scale: float,
             height: int | None = None, width: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(images (N, H, W, 3) uint8, final latents (N, C, h, w)) of one pipeline call: what a probe records."""
    h, w = image_size(pipe, height, width)
    latents = denoise(pipe, prompts, seeds, sample_steps=sample_steps, guidance_scale=guidance_scale, height=h, width=w,
                      output_type="latent")
    return decode(pipe, latents), latents


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents as the UNet sees them -> (N, H, W, 3) uint8 images."""
    vae = pipe.vae
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (((image.float() / 2 + 0.5).clamp(0, 1)) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode(pipe, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> latents scaled as the UNet sees them (deterministic: the posterior mean)."""
    vae = pipe.vae
    x = torch.as_tensor(images, device=vae.device).permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor
