"""Scoring of one job: a denoising loss on held-out latents and image metrics of the samples.

`score(...)` is the one place image metrics are computed; it delegates to `metrics.score_images`, so swapping
the metric implementation is a one-line change here.

`denoising_loss` is the protocol's own metric: the plain (unweighted) epsilon-prediction MSE of the DDPM
objective (Ho et al. 2020, Eq. 14) on held-out latents, at fixed timesteps and fixed noise. The noise and
timesteps do not depend on the variant or on the job seed, so differences between variants are paired.
"""

from __future__ import annotations

import numpy as np
import torch


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap CI of the mean of per-example values."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    a = (1 - level) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]


@torch.no_grad()
def denoising_loss(unet, text_encoder, data, *, batch_size: int = 64, seed: int = 1234,
                   scheduler_config: dict | None = None) -> np.ndarray:
    """Per-example epsilon MSE on `data` (LatentData), t spread evenly over [0, T) across examples."""
    from diffusers import DDPMScheduler

    from tiny_sd.arch import scheduler_config as default_sched

    sched = DDPMScheduler.from_config(scheduler_config or default_sched())
    p = next(unet.parameters())
    n, T = len(data), sched.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(data.latents.shape, generator=g)
    t = torch.linspace(0, T - 1, n).round().long()[torch.randperm(n, generator=g)]
    unet.eval()
    losses = []
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        x0, eps, ts = data.latents[sl], noise[sl], t[sl]
        xt = sched.add_noise(x0, eps, ts)
        cond = text_encoder(data.input_ids[sl].to(text_encoder.device))[0]
        pred = unet(xt.to(p.device, p.dtype), ts.to(p.device), cond.to(p.device, p.dtype)).sample
        losses.append((pred.float().cpu() - eps).pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(losses).numpy()


def image_metrics_available() -> bool:
    """True when the tiny_sd evaluator's weights are installed (image metrics need them)."""
    from tiny_sd.evaluator import WEIGHTS_DIR

    return (WEIGHTS_DIR / "model.safetensors").exists()


def use_image_metrics(cfg) -> bool:
    """Whether a job computes image metrics: ``image_metrics=auto`` means when the evaluator's weights are there."""
    setting = cfg.get("image_metrics")
    return image_metrics_available() if setting == "auto" else bool(setting)


def score(images: torch.Tensor, prompts: list[str], metrics_cfg=None, generation: dict | None = None) -> dict:
    """Image metrics of generated `images` (N,3,H,W in [0,1]) for their `prompts`: the metrics package's
    `score_images` (FD/KID in evaluator and Inception space, attribute accuracy, CLIP score, real-vs-real floor,
    bootstrap CIs, provenance). Returns {"metrics", "ci", "higher_is_better", "provenance", ...}."""
    from metrics import score_images

    return score_images(images, prompts, metrics_cfg, generation=generation)
