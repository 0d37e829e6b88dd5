"""Scoring of one job: a denoising loss on held-out latents and image metrics of the samples.

`scorer(...)` is the one place image metrics are set up; it delegates to `metrics.Scorer`, so swapping the metric
implementation is a one-line change here.

`denoising_loss` is the protocol's own metric: the plain (unweighted) MSE of the DDPM objective (Ho et al. 2020,
Eq. 14; the v target for v-prediction models) on held-out latents, at fixed timesteps and fixed noise. The noise and
timesteps do not depend on the variant or on the job seed, so differences between variants are paired.
"""

from __future__ import annotations

import numpy as np
import torch

from metrics import Scorer
from metrics.evaluator import WEIGHTS_DIR
from tiny_sd.arch import scheduler_config as default_sched
from tiny_sd.training import prediction_target


@torch.no_grad()
def denoising_loss(unet, encode, data, *, batch_size: int = 64, seed: int = 1234,
                   scheduler_config: dict | None = None) -> np.ndarray:
    """Per-example MSE of the prediction target (epsilon, or v for a v-prediction scheduler) on `data`
    (LatentData), t spread evenly over [0, T) across examples; `encode(captions) -> (states, added_cond_kwargs)`
    is the job's frozen conditioning (`ablations.conditioning.PromptEncoder`)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(scheduler_config or default_sched())
    p = next(unet.parameters())
    n, T = len(data), sched.config.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *data.latents.shape[1:]), generator=g)
    t = torch.linspace(0, T - 1, n).round().long()[torch.randperm(n, generator=g)]
    unet.eval()
    losses = []
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        x0, eps, ts = data.latent_batch(sl), noise[sl], t[sl]
        xt = sched.add_noise(x0, eps, ts)
        cond, added = encode(data.captions[sl])
        added = {k: v.to(p.device, p.dtype) for k, v in added.items()} if added else None
        pred = unet(xt.to(p.device, p.dtype), ts.to(p.device), cond.to(p.device, p.dtype),
                    added_cond_kwargs=added).sample
        target = prediction_target(sched, x0, eps, ts)
        losses.append((pred.float().cpu() - target).pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(losses).numpy()


def image_metrics_available() -> bool:
    """True when the tiny_sd evaluator's weights are installed (image metrics need them)."""
    return (WEIGHTS_DIR / "model.safetensors").exists()


def use_image_metrics(cfg) -> bool:
    """Whether a job computes image metrics: ``image_metrics=auto`` means when the evaluator's weights are there."""
    setting = cfg.get("image_metrics")
    return image_metrics_available() if setting == "auto" else bool(setting)


def scorer(metrics_cfg, source, device=None):
    """The job's streaming image scorer (`metrics.Scorer`: FD/KID in evaluator and Inception space, attribute
    accuracy, CLIP score, real-vs-real floor, bootstrap CIs, provenance) with `source` (the data's held-out split)
    as the reference images unless `metrics.reference.dataset` names another."""
    ref = (metrics_cfg or {}).get("reference", {}) or {}
    return Scorer(metrics_cfg, device=device, source=source if ref.get("dataset", "data") == "data" else None)
