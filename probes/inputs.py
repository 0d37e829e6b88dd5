"""The UNet's inputs when a probe calls it directly (interventions at a timestep, attributions): the conditioning, the
latent noised to training timestep t, and the grid of timesteps probed. Sampling itself is `foundation.sampling`."""

from __future__ import annotations

import numpy as np
import torch

from foundation.conditioning import encode as encode_prompts


def conditioning(pipe, prompts: list[str], height: int, width: int) -> dict:
    """Keyword arguments of `unet(x, t, **cond)` for the conditional prompts (no CFG)."""
    embeds, added = encode_prompts(pipe, prompts, height, width, device=pipe.unet.device)
    return dict(encoder_hidden_states=embeds, **({"added_cond_kwargs": added} if added else {}))


def noised(pipe, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the pipeline's own schedule (its `alphas_cumprod`):
    the UNet's input at training timestep t, whatever the sampler.

    Not `scheduler.add_noise`: the sigma-parameterised schedulers (Euler, Heun, DPM-Solver with Karras sigmas) return
    the unscaled x0 + sigma eps and index sigma by position in their inference timesteps. For DDPM/DDIM/PNDM this
    equals their add_noise bit for bit (tested)."""
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
