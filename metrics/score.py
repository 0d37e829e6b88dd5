"""High-level scoring: stream generated images in, get metrics + CIs + provenance out.

    scorer = Scorer(cfg)                      # cfg: the `metrics` config group (dict/DictConfig/None)
    for images, prompts in batches: scorer.update(images, prompts)
    result = scorer.compute(generation={"seeds": [...], "sampler": ..., "steps": 25, "cfg_scale": 7.5})

`score_images(images, prompts, cfg)` is the one-shot form; `evaluate_pipeline(pipe, prompts, seeds, cfg)` samples
a diffusers pipeline with paired, per-image seeds and scores it (what the ablation sweep calls).
The result is {"metrics", "ci", "higher_is_better", "provenance", "primary"} as in docs/CONTRACTS.md's result.json.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from . import reference as ref
from .config import load_config
from .data import build_source, resize_images
from .frechet import frechet_distance_from_moments, frechet_distance_to_moments, mean_cov, sqrt_psd
from .kid import kid_subsets
from .provenance import versions
from .stats import FeatureStats
from .uncertainty import bootstrap_ci, mean_ci

FD_IMPL = "unet_lab.metrics.frechet (float64; Tr sqrt via eigh of sqrt(S1) S2 sqrt(S1))"
KID_IMPL = "torchmetrics.image.kid.poly_mmd (cubic polynomial kernel, unbiased MMD^2), mean over {s} subsets of {m}"

# per-image metrics: name -> higher is better
PER_IMAGE = {"clip_evaluator": True, "colour_acc": True, "shape_acc": True, "object_acc": True,
             "all_correct": True, "count_correct": True, "relation_acc": True, "clip_score": True,
             "clip_score_x100": True}


class Scorer:
    """Streaming scorer. Extractors and reference statistics are set up lazily and cached on disk."""

    def __init__(self, cfg=None, *, evaluator=None, extractors: dict | None = None, device=None,
                 progress: bool = False):
        self.cfg = load_config(cfg)
        self.device = device
        # KID's m x m kernels are the costliest step at d = 2048: run them on the GPU when scoring there
        self.kid_device = device if device is not None and torch.device(device).type == "cuda" else None
        self.progress = progress
        self.notes: list[str] = []
        self.fid_status = "disabled"
        self.evaluator = None
        self.extractors = dict(extractors or {})
        c = self.cfg
        if c["evaluator"]["enabled"] or "evaluator" in self.extractors:
            from tiny_sd.evaluator import load_evaluator

            from .extractors import EvaluatorExtractor

            self.evaluator = evaluator if evaluator is not None else load_evaluator(device)
            self.extractors.setdefault("evaluator", EvaluatorExtractor(self.evaluator))
        if c["fid"]["enabled"] and "inception" not in self.extractors:
            from .inception import InceptionExtractor, InceptionWeightsMissing

            try:
                self.extractors["inception"] = InceptionExtractor(c["fid"]["weights"], c["fid"]["feature"],
                                                                  c["fid"]["antialias"], device)
            except (InceptionWeightsMissing, ModuleNotFoundError) as e:
                self.fid_status = f"unavailable: {e}"
                warnings.warn(f"FID skipped, primary metric falls back to {c['fid']['fallback']}: {e}", stacklevel=2)
        if "inception" in self.extractors:
            self.fid_status = "ok"
        self.clip = None
        if c["clip"]["model"]:
            from .clip_hf import ClipModelMissing, HFClipScorer

            try:
                self.clip = HFClipScorer(c["clip"]["model"], device)
            except ClipModelMissing as e:
                self.notes.append(f"clip_score skipped: {e}")
                warnings.warn(str(e), stacklevel=2)
        self.gen = {k: FeatureStats(e.dim, keep="float32") for k, e in self.extractors.items()}
        self.per_image: dict[str, list[float]] = {k: [] for k in PER_IMAGE}
        self.n = 0
        self._text_ok = self.evaluator is not None

    # ------------------------------------------------------------------------------------------------------
    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        """Add a batch of generated images (N,3,H,W) float in [0,1] (any device) with their prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        x = resize_images(images.detach().float().clamp(0, 1), self.cfg["resolution"], self.cfg["resize"])
        for k, e in self.extractors.items():
            self.gen[k].update(e(x))
        if self._text_ok:
            try:
                clip = self.evaluator.clip_score(x, prompts).cpu().tolist()
                attrs = self.evaluator.attribute_scores(x, prompts)
            except ValueError as err:  # prompts outside the shapes vocabulary (e.g. SD prompts)
                self._text_ok = False
                self.notes.append(f"evaluator text metrics skipped: {err}")
            else:
                self.per_image["clip_evaluator"] += clip
                for a in attrs:
                    for k in ("colour_acc", "shape_acc", "object_acc"):
                        self.per_image[k].append(a[k])
                    self.per_image["all_correct"].append(float(a["all_correct"]))
                    self.per_image["count_correct"].append(float(a["count_correct"]))
                    self.per_image["relation_acc"].append(
                        float("nan") if a["relation_correct"] is None else float(a["relation_correct"]))
        if self.clip is not None:
            cos = self.clip(x, prompts).tolist()
            self.per_image["clip_score"] += cos
            self.per_image["clip_score_x100"] += [100 * max(c, 0.0) for c in cos]
        self.n += len(images)

    # ------------------------------------------------------------------------------------------------------
    def compute(self, generation: dict | None = None, indices=None) -> dict:
        """Metrics over all images so far (or over `indices`), with CIs and provenance."""
        c, u = self.cfg, self.cfg["uncertainty"]
        idx = np.arange(self.n) if indices is None else np.asarray(indices)
        n = len(idx)
        if n < 2:
            raise ValueError(f"need at least 2 generated images to score, got {n}")
        metrics, ci, hib, impl, extr = {}, {}, {}, {}, {}
        source = build_source(c["reference"])
        ref_info = {}
        for name, e in self.extractors.items():
            tag = "evaluator" if name == "evaluator" else "inception"
            fd_name = "fd_evaluator" if tag == "evaluator" else "fid"
            kid_name = f"kid_{tag}"
            rstats, info = ref.reference_stats(source, e, c["reference"]["n"], resolution=c["resolution"],
                                               resize=c["resize"], cache_dir=c["cache_dir"],
                                               batch_size=c["batch_size"], keep=c["reference"]["keep"],
                                               progress=self.progress)
            ref_info[name] = {"path": info["path"], "from_cache": info["from_cache"]}
            feats = self.gen[name].features[torch.as_tensor(idx)].double().numpy()
            mu_r, cov_r = rstats.mean, rstats.cov
            root_r = sqrt_psd(cov_r) if n > e.dim else None
            metrics[fd_name] = frechet_distance_from_moments(*mean_cov(feats), mu_r, cov_r)
            fd_b = lambda i, f=feats, m=mu_r, s=cov_r, r=root_r: frechet_distance_to_moments(f[i], m, s, r)  # noqa
            ci[fd_name] = list(bootstrap_ci(fd_b, n, min(u["bootstrap"], u["fd_bootstrap"]), u["level"], u["seed"],
                                            metrics[fd_name]))
            hib[fd_name] = False
            impl[fd_name] = FD_IMPL
            if rstats.keep:
                rf = rstats.features.float()
                kid = kid_subsets(torch.from_numpy(feats), rf, c["kid"]["subsets"], c["kid"]["subset_size"], u["seed"], self.kid_device)
                metrics[kid_name], metrics[f"{kid_name}_std"] = float(kid.mean()), float(kid.std())
                kid_b = lambda i, f=feats, r=rf: float(kid_subsets(  # noqa: E731
                    torch.from_numpy(f[i]), r, c["kid"]["bootstrap_subsets"], c["kid"]["subset_size"], u["seed"],
                    self.kid_device).mean())
                ci[kid_name] = list(bootstrap_ci(kid_b, n, min(u["bootstrap"], u["fd_bootstrap"]) // 5, u["level"], u["seed"],
                                                 metrics[kid_name]))
                hib[kid_name] = hib[f"{kid_name}_std"] = False
                impl[kid_name] = KID_IMPL.format(s=c["kid"]["subsets"], m=min(c["kid"]["subset_size"], n))
            if c["floor"]:
                self._floor(source, e, n, rstats, fd_name, kid_name, metrics, hib, ref_info[name])
            extr[name] = {"name": e.name, "dim": e.dim, "weights_sha256": e.weights_sha256, "resize": e.resize}
            if tag == "inception":
                extr[name].update(path=str(e.path), official_weights=e.official_weights)
        for k, hi in PER_IMAGE.items():
            vals = np.asarray(self.per_image[k], np.float64)
            if len(vals) != self.n:
                continue
            v = vals[idx]
            v = v[np.isfinite(v)]
            if len(v) == 0:
                continue
            metrics[k] = float(v.mean())
            ci[k] = list(bootstrap_ci(lambda i, v=v: float(v[i].mean()), len(v), u["bootstrap"], u["level"], u["seed"]))
            hib[k] = hi
        primary = c["primary"] if c["primary"] in metrics else c["fid"]["fallback"]
        prim_ext = "inception" if primary in ("fid", "kid_inception") else "evaluator"
        g = generation or {}
        ext = extr.get(prim_ext, {})
        provenance = {
            "implementation": impl.get(primary, "mean over images" if primary in PER_IMAGE else None),
            "extractor": ext.get("name"), "weights_sha256": ext.get("weights_sha256"),
            "resize": f"{c['resize']} to {c['resolution']}px, then {ext.get('resize')}",
            "n": n, "seeds": g.get("seeds"), "sampler": g.get("sampler"), "steps": g.get("steps"),
            "cfg_scale": g.get("cfg_scale"),
            "primary_metric": primary, "fid_status": self.fid_status, "implementations": impl, "extractors": extr,
            "reference": {"dataset": source.id, "n": c["reference"]["n"], "resolution": c["resolution"],
                          "cache": ref_info},
            "clip": ({"backbone": self.clip.backbone, "scale": "clip_score: raw cosine; clip_score_x100: "
                      "100*max(cos,0) (torchmetrics)"} if self.clip else None),
            "clip_evaluator": ("tiny_sd evaluator contrastive towers, raw cosine" if "clip_evaluator" in metrics
                               else None),
            "uncertainty": {"ci": f"percentile bootstrap over generated images, reference fixed, level "
                            f"{u['level']}; FD/KID bootstrap re-centred on the point estimate",
                            "replicates": u["bootstrap"], "fd_replicates": min(u["bootstrap"], u["fd_bootstrap"]),
                            "kid_replicates": min(u["bootstrap"], u["fd_bootstrap"]) // 5, "seed": u["seed"]},
            "versions": versions(), "notes": list(self.notes),
        }
        return {"metrics": metrics, "ci": ci, "higher_is_better": hib, "provenance": provenance, "primary": primary}

    def _floor(self, source, e, n, rstats, fd_name, kid_name, metrics, hib, info) -> None:
        """Real-vs-real at the generated N: the next n real images of the same source against the reference."""
        c = self.cfg
        start = c["reference"]["n"]
        if start + n > len(source):
            self.notes.append(f"{fd_name}_floor skipped: {source.id} has {len(source)} images, the floor needs "
                              f"{start + n} (reference {start} + generated {n})")
            return
        fstats, finfo = ref.reference_stats(source, e, n, start=start, resolution=c["resolution"], resize=c["resize"],
                                            cache_dir=c["cache_dir"], batch_size=c["batch_size"], keep="float32",
                                            progress=self.progress)
        info["floor_from_cache"] = finfo["from_cache"]
        metrics[f"{fd_name}_floor"] = frechet_distance_from_moments(fstats.mean, fstats.cov, rstats.mean, rstats.cov)
        hib[f"{fd_name}_floor"] = False
        if rstats.keep:
            metrics[f"{kid_name}_floor"] = float(kid_subsets(fstats.features, rstats.features.float(),
                                                             c["kid"]["subsets"], c["kid"]["subset_size"],
                                                             c["uncertainty"]["seed"], self.kid_device).mean())
            hib[f"{kid_name}_floor"] = False


def score_images(images: torch.Tensor, prompts: list[str], cfg=None, *, generation: dict | None = None,
                 **scorer_kwargs) -> dict:
    """One-shot scoring of generated images (N,3,H,W) in [0,1] with their prompts; see `Scorer`."""
    s = Scorer(cfg, **scorer_kwargs)
    bs = s.cfg["batch_size"]
    for i in range(0, len(images), bs):
        s.update(images[i:i + bs], prompts[i:i + bs])
    return s.compute(generation)


def image_seed(seed: int, index: int) -> int:
    """Per-image generator seed: identical across variants (paired comparisons), distinct across images."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


def paired_latents(pipe, seeds: list[int], height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Initial noise for each image seed, drawn on the CPU from its own generator.

    So image i gets the same noise in every variant, whatever the batch size, device or dtype (a CUDA generator
    would give other numbers than the CPU one). Returned on the CPU in float32.
    """
    f = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size * f
    shape = (1, pipe.unet.config.in_channels, (height or size) // f, (width or size) // f)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def evaluate_pipeline(pipe, prompts: list[str], seeds: list[int], cfg=None, *, num_inference_steps: int = 25,
                      guidance_scale: float = 7.5, batch_size: int = 16, keep_images: int = 0,
                      progress: bool = True, **scorer_kwargs) -> dict:
    """Sample `pipe` for every (seed, prompt) with per-image seeds and score the images.

    Returns score_images' dict for all images pooled, plus ``per_seed`` ({seed: metrics}), ``seed_ci``
    ({metric: [mean, lo, hi]} over seeds, Student t) and, with keep_images=k, the first k images as ``images``.
    """
    from tqdm import tqdm

    dev = getattr(pipe, "device", torch.device("cpu"))
    scorer_kwargs.setdefault("device", dev)  # extractors run where the pipeline samples
    scorer = Scorer(cfg, progress=progress, **scorer_kwargs)
    kept, t0, ranges = [], time.time(), {}
    total = len(seeds) * math.ceil(len(prompts) / batch_size)
    bar = tqdm(total=total, desc="sampling", disable=not progress)
    for s in seeds:
        lo = scorer.n
        for i in range(0, len(prompts), batch_size):
            ps = prompts[i:i + batch_size]
            latents = paired_latents(pipe, [image_seed(s, i + j) for j in range(len(ps))])
            out = pipe(ps, latents=latents.to(dev, pipe.unet.dtype), num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, output_type="pt")
            imgs = out.images if torch.is_tensor(out.images) else torch.as_tensor(np.asarray(out.images))
            scorer.update(imgs, ps)
            if len(kept) * batch_size < keep_images:
                kept.append(imgs.cpu())
            bar.update(1)
        ranges[s] = np.arange(lo, scorer.n)
    bar.close()
    gen = {"seeds": list(seeds), "sampler": type(pipe.scheduler).__name__, "steps": num_inference_steps,
           "cfg_scale": guidance_scale}
    result = scorer.compute(gen)
    if len(seeds) > 1:
        per = {s: scorer.compute(gen, indices=r)["metrics"] for s, r in ranges.items()}
        result["per_seed"] = per
        level = scorer.cfg["uncertainty"]["level"]
        result["seed_ci"] = {k: list(mean_ci([m.get(k, float("nan")) for m in per.values()], level))
                             for k in result["metrics"]}
    result["provenance"]["sampling_seconds_total"] = round(time.time() - t0, 2)
    if keep_images:
        result["images"] = torch.cat(kept)[:keep_images]
    return result
