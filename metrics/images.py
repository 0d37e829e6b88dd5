"""Image tensors as the metrics take them: float (N,3,H,W) in [0, 1], brought to the metrics resolution by a centre
crop to square and one resize (the same for generated and reference images)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RESIZE_MODES = ("bilinear-antialias", "bicubic-antialias", "none")


def check_images(images) -> None:
    """Raise TypeError unless `images` is a floating-point tensor (values in [0, 1]).

    Integer images (uint8 0-255, as PIL/numpy give them) would be clamped to [0, 1], i.e. saturated to almost
    all-white, and scored without any error: they must be converted (``x.float() / 255``) by the caller.
    """
    if not torch.is_tensor(images):
        raise TypeError(f"images must be a torch.Tensor (N,3,H,W) of floats in [0, 1], got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        hint = " (0-255 pixels: pass images.float() / 255)" if images.dtype == torch.uint8 else ""
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}{hint}; integer images "
                        f"would be clamped to [0, 1] and scored as saturated")


def resize_images(images: torch.Tensor, resolution: int, mode: str = "bilinear-antialias") -> torch.Tensor:
    """Centre-crop to square, then resize to resolution x resolution; 'none' requires the size already."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {RESIZE_MODES}")
    h, w = images.shape[-2:]
    if h != w:
        s = min(h, w)
        images = images[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if images.shape[-1] == resolution:
        return images
    if mode == "none":
        raise ValueError(f"images are {h}x{w} but resize='none' and resolution={resolution}")
    out = F.interpolate(images.float(), size=(resolution, resolution), mode=mode.split("-")[0], antialias=True,
                        align_corners=False)
    return out.clamp(0, 1)
