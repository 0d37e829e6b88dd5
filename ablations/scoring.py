"""Scoring of one job: a denoising loss on held-out latents and image metrics of the samples.

`score(...)` is the one place image metrics are computed; it delegates to the metrics package and to the
tiny_sd evaluator, so swapping the metric implementation is a one-line change here.

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


def reference_images(n: int) -> torch.Tensor:
    """n held-out real shapes-world images as floats (N, 3, 64, 64) in [0, 1] (same prompts as sampling)."""
    from tiny_sd import shapes

    imgs = np.stack([shapes.sample(shapes.HELDOUT_SEED, i).image for i in range(n)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0


def image_metrics_available() -> bool:
    """True when the tiny_sd evaluator's weights are installed (image metrics need them)."""
    from tiny_sd.evaluator import WEIGHTS_DIR

    return (WEIGHTS_DIR / "model.safetensors").exists()


def score(images: torch.Tensor, prompts: list[str], *, device=None) -> dict:
    """Image metrics of generated `images` (N,3,H,W in [0,1]) for their `prompts`.

    Returns {"metrics": {name: float}, "ci": {name: [lo, hi]}, "higher_is_better": {name: bool},
    "provenance": {...}}. Uses the tiny_sd evaluator (features, CLIP-style score, object detector) and
    `metrics.frechet_distance` against as many held-out real images as generated ones.
    """
    from metrics.frechet import frechet_distance
    from tiny_sd.evaluator import load_evaluator

    ev = load_evaluator(device)
    n = len(images)
    clip = ev.clip_score(images, prompts).float().cpu().numpy()
    attrs = ev.attribute_scores(images, prompts)
    obj = np.array([a["object_acc"] for a in attrs], np.float64)
    allc = np.array([float(a["all_correct"]) for a in attrs], np.float64)
    feats = ev.image_features(images).float().cpu().numpy()
    ref = ev.image_features(reference_images(n)).float().cpu().numpy()
    fd = frechet_distance(feats, ref)
    return {
        "metrics": {"fd_eval": float(fd), "clip_score": float(clip.mean()), "object_acc": float(obj.mean()),
                    "all_correct": float(allc.mean())},
        "ci": {"clip_score": bootstrap_ci(clip), "object_acc": bootstrap_ci(obj), "all_correct": bootstrap_ci(allc)},
        "higher_is_better": {"fd_eval": False, "clip_score": True, "object_acc": True, "all_correct": True},
        "provenance": {"implementation": "metrics.frechet_distance + tiny_sd.evaluator", "extractor":
                       "tiny_sd.evaluator image tower (penultimate)", "weights_sha256": ev.weights_sha256,
                       "resize": f"evaluator to_model_size -> {ev.cfg.get('image_size')}", "n": n,
                       "reference": f"shapes held-out seed, first {n} images", "clip_scale": "raw cosine",
                       "ci_method": "percentile bootstrap over images, 1000 resamples"},
    }
