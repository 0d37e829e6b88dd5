"""Facts about a diffusers pipeline that every area reads the same way."""

from __future__ import annotations


def native_resolution(pipe) -> int:
    """The image side a pipeline generates by default: the UNet's sample size times the VAE's downsampling factor
    (512 for SD 1.5, 768 for SD 2.1-v, 1024 for SDXL, 64 for tiny_sd)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
