"""Seeded, batched sampling with paired seeds: image i of seed k gets the same initial noise in every variant.

Each image has its own `torch.Generator` (diffusers accepts one per image), so its noise does not depend on
the batch size or on the other images in the batch; only the UNet differs between variants.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from metrics.score import image_seed, paired_latents
from tiny_sd import shapes


def prompts_for(n: int) -> list[str]:
    """The first n held-out shapes-world captions (never seen in training: HELDOUT_SEED)."""
    return [shapes.sample(shapes.HELDOUT_SEED, i).caption for i in range(n)]


def image_seeds(seed: int, n: int) -> list[int]:
    """Per-image noise seeds of job seed `seed`: disjoint across job seeds, identical across variants."""
    return [image_seed(seed, i) for i in range(n)]


def with_unet(pipe, unet):
    """A new pipeline object sharing every component of `pipe` except the UNet."""
    from .loading import _quiet

    with _quiet():  # no safety-checker notice per variant
        return type(pipe)(**{**pipe.components, "unet": unet})


@torch.no_grad()
def sample(pipe, unet, prompts: list[str], seeds: list[int], *, steps: int, cfg_scale: float,
           batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] on the CPU, sampled with `unet` in `pipe`."""
    p = with_unet(pipe, unet.eval())
    p.set_progress_bar_config(disable=True)
    device = p.unet.device
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress, dynamic_ncols=True):
        sl = slice(start, start + batch_size)
        latents = paired_latents(p, seeds[sl]).to(device, p.unet.dtype)
        imgs = p(prompts[sl], num_inference_steps=steps, guidance_scale=cfg_scale, latents=latents,
                 output_type="pt").images
        out.append(imgs.float().cpu())
    return torch.cat(out)
