"""Pipeline plumbing shared by the probe runners: seeded sampling, conditioning, noising.

Kept apart from the probes so they stay pipeline-agnostic (they only see the UNet); this file knows
the two pipeline families we support (SD 1.x/2.x and SDXL, which adds pooled text embeddings and
size/crop `time_ids` as UNet conditions).
"""

from __future__ import annotations

import numpy as np
import torch

from foundation.conditioning import encode as encode_prompts
from foundation.pipeline import native_resolution


def image_size(pipe, height=None, width=None) -> tuple[int, int]:
    default = native_resolution(pipe)
    return int(height or default), int(width or default)


def generate(pipe, prompts: list[str], *, seed: int, steps: int, guidance_scale: float,
             height: int | None = None, width: int | None = None, num_images_per_prompt: int = 1):
    """Seeded sampling: (images (N, H, W, 3) uint8, final latents (N, 4, h, w))."""
    h, w = image_size(pipe, height, width)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    latents = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, height=h, width=w,
                   generator=gen, num_images_per_prompt=num_images_per_prompt, output_type="latent").images
    return decode(pipe, latents), latents


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    vae = pipe.vae
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (((image.float() / 2 + 0.5).clamp(0, 1)) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode(pipe, images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> latents scaled as the UNet sees them (deterministic: the posterior mean)."""
    vae = pipe.vae
    x = torch.as_tensor(images, device=vae.device).permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def conditioning(pipe, prompts: list[str], height: int, width: int) -> dict:
    """Keyword arguments of `unet(x, t, **cond)` for the conditional prompts (no CFG)."""
    embeds, added = encode_prompts(pipe, prompts, height, width, device=pipe.unet.device)
    return dict(encoder_hidden_states=embeds, **({"added_cond_kwargs": added} if added else {}))


def noised(pipe, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the pipeline's own schedule (its `alphas_cumprod`):
    the UNet's input at training timestep t, whatever the sampler.

    Not `scheduler.add_noise`: the sigma-parameterised schedulers (Euler, SDXL's default; Heun, DPM-Solver's Karras
    variants) return x0 + sigma eps, the *unscaled* latent that their `scale_model_input` divides by
    sqrt(sigma^2 + 1) before the UNet sees it, and they index sigma by position in their *inference* timesteps: a grid
    timestep not in the last run's schedule raised, and after a pipeline call (begin_index set) every t got the
    last step's sigma. For DDPM/DDIM/PNDM this is their add_noise, term for term (bit-identical, tested)."""
    acp = pipe.scheduler.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
    a = acp[torch.tensor([int(t)], device=x0.device)]
    sqrt_a = (a ** 0.5).flatten()
    sqrt_1ma = ((1 - a) ** 0.5).flatten()
    while sqrt_a.ndim < x0.ndim:
        sqrt_a, sqrt_1ma = sqrt_a.unsqueeze(-1), sqrt_1ma.unsqueeze(-1)
    return sqrt_a * x0 + sqrt_1ma * noise


def timestep_grid(pipe, n: int) -> list[int]:
    """n timesteps spread evenly over the training range, noisy first."""
    T = pipe.scheduler.config.num_train_timesteps
    return sorted({int(round(t)) for t in np.linspace(T - 1, 0, n)}, reverse=True)


def grid_edges(grid: list[int], T: int) -> list[float]:
    """Bin edges putting each grid timestep in its own bin (midpoints between neighbours)."""
    g = sorted(grid)
    mids = [(a + b) / 2 for a, b in zip(g, g[1:])]
    return [0.0, *mids, float(T)]
