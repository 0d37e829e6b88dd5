"""Training augmentation: push real images towards what a small VAE + diffusion model produces."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma (N,)), 5x5 separable kernels applied as one grouped conv."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 5)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0).view(n * c, 1, 1, 5)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random scale (0.85-1.15) and shift, blur (sigma 0-1.2), desaturation (0-30% towards grey), colour jitter
    (+-10% gain, +-0.05 offset per channel) and noise (std 0-0.05).

    Washed-out, slightly shifted colours are the typical failure of small VAEs/diffusion models; training the
    crop classifier over this neighbourhood of each prototype colour makes its decisions there well defined
    (close to nearest-prototype) instead of arbitrary extrapolation.
    """
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    s = 1 / (0.85 + 0.3 * u(n))
    t = (u(n, 2) - 0.5) * 0.1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = _gaussian_blur(x, 1.2 * u(n))
    grey = x.mean(1, keepdim=True)
    x = x + (grey - x) * 0.3 * u(n, 1, 1, 1)
    x = x * (1 + (u(n, 3, 1, 1) - 0.5) * 0.2) + (u(n, 3, 1, 1) - 0.5) * 0.1
    x = x + torch.randn(x.shape, generator=g) * 0.05 * u(n, 1, 1, 1)
    return x.clamp(0, 1)
