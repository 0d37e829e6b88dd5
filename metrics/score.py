"""High-level scoring: stream generated images in, get metrics + CIs + provenance out.

    scorer = Scorer(cfg)                      # cfg: the `metrics` config group (dict/DictConfig/None)
    for images, prompts in batches: scorer.update(images, prompts)
    result = scorer.compute(generation={"seeds": [...], "sampler": ..., "sample_steps": 25, "guidance_scale": 7.5})

`score_images(images, prompts, cfg)` is the one-shot form; `evaluate_pipeline(pipe, prompts, seeds, cfg)` samples
a diffusers pipeline with paired, per-image seeds and scores it (what the ablation sweep calls).
The result is {"metrics", "ci", "higher_is_better", "provenance", "primary"} as in docs/CONTRACTS.md's result.json.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from foundation.sampling import image_seeds, n_batches, sample_batches
from foundation.stats import bootstrap_ci
from foundation.stats import t_interval as mean_ci

from . import clip_hf  # the module, not its names: tests substitute clip_hf.HFClipScorer
from .config import load_config
from .data import build_source
from .evaluator import load_evaluator
from .extractors import EvaluatorExtractor
from .floor import real_floor
from .frechet import frechet_distance_ci
from .images import check_images, resize_images
from .inception import InceptionExtractor, InceptionWeightsMissing, unloadable_inception_message
from .kid import kid_ci, kid_subset_size
from .provenance import versions
from .reference import reference_stats
from .selection import PER_IMAGE, choose_primary, distance_names, producible_metrics
from .stats import FeatureStats

FD_IMPL = "unet_lab.metrics.frechet (float64; Tr sqrt via eigh of sqrt(S1) S2 sqrt(S1))"
KID_IMPL = "torchmetrics.image.kid.poly_mmd (cubic polynomial kernel, unbiased MMD^2), mean over {s} subsets of {m}"


class Scorer:
    """Streaming scorer. Extractors and reference statistics are set up lazily and cached on disk."""

    def __init__(self, cfg=None, *, evaluator=None, extractors: dict | None = None, device=None,
                 progress: bool = False, source=None):
        self.cfg = load_config(cfg)
        # the reference images: a job passes its data's held-out split; else metrics.reference decides
        self.source = source
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
            self.evaluator = evaluator if evaluator is not None else load_evaluator(device)
            self.extractors.setdefault("evaluator", EvaluatorExtractor(self.evaluator))
        if c["fid"]["enabled"] and "inception" not in self.extractors:
            try:
                self.extractors["inception"] = InceptionExtractor(c["fid"]["weights"], c["fid"]["feature"],
                                                                  c["fid"]["antialias"], device)
            except Exception as e:  # noqa: BLE001 - a bad weights file must not stop a sweep: fall back as if missing
                reason = (str(e) if isinstance(e, (InceptionWeightsMissing, ModuleNotFoundError))
                          else unloadable_inception_message(c["fid"]["weights"], e))
                self.fid_status = f"unavailable: {reason}"
                warnings.warn(f"FID skipped, primary metric falls back to {c['fid']['fallback']}: {reason}",
                              stacklevel=2)
        if "inception" in self.extractors:
            self.fid_status = "ok"
        self.clip = None
        if c["clip"]["model"]:
            try:
                self.clip = clip_hf.HFClipScorer(c["clip"]["model"], device)
            except clip_hf.ClipModelMissing as e:
                self.notes.append(f"clip_score skipped: {e}")
                warnings.warn(str(e), stacklevel=2)
        # Decided now, before any image is sampled: a primary that can never be computed is a config error, and
        # finding out only after an hour of sampling (or naming a metric the result does not hold) is worse.
        self.primary = choose_primary(c["primary"], c["fid"]["fallback"], producible_metrics(
            self.extractors, kid=bool(c["reference"]["keep"]), evaluator=self.evaluator is not None,
            clip=self.clip is not None), self.fid_status)
        self.gen = {k: FeatureStats(e.dim, keep="float32") for k, e in self.extractors.items()}
        self.per_image: dict[str, list[float]] = {k: [] for k in PER_IMAGE}
        self.n = 0
        self._text_ok = self.evaluator is not None

    # ------------------------------------------------------------------------------------------------------
    def update(self, images: torch.Tensor, prompts: list[str]) -> None:
        """Add a batch of generated images (N,3,H,W) float in [0,1] (any device) with their prompts."""
        self.add(self.extract(images, prompts))

    def extract(self, images: torch.Tensor, prompts: list[str]) -> dict:
        """What one batch contributes, computed without touching the running state: features per extractor and
        per-image values (CPU tensors and lists; picklable). `add` accumulates it. Split so that the ranks of a
        distributed job extract their batches and one rank adds every batch in order: the numbers are then
        those of a single process, whatever the number of ranks."""
        check_images(images)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        # float only (checked above): a slight overshoot of [0, 1] (SD's VAE decodes a little outside) is clipped
        full = images.detach().float().clamp(0, 1)
        x = resize_images(full, self.cfg["resolution"], self.cfg["resize"])
        part = {"n": len(images), "features": {k: e(x).cpu() for k, e in self.extractors.items()},
                "per_image": {}, "note": None}
        if self._text_ok:
            try:
                clip = self.evaluator.clip_score(x, prompts).cpu().tolist()
                attrs = self.evaluator.attribute_scores(x, prompts)
            except ValueError as err:  # prompts outside the shapes vocabulary (e.g. SD prompts)
                part["note"] = f"evaluator text metrics skipped: {err}"
            else:
                v = part["per_image"]
                v["clip_evaluator"] = clip
                for k in ("colour_acc", "shape_acc", "object_acc"):
                    v[k] = [a[k] for a in attrs]
                v["all_correct"] = [float(a["all_correct"]) for a in attrs]
                v["count_correct"] = [float(a["count_correct"]) for a in attrs]
                v["relation_acc"] = [float("nan") if a["relation_correct"] is None else float(a["relation_correct"])
                                     for a in attrs]
        if self.clip is not None:
            # full resolution: the CLIP processor resizes to its own input size; the metrics resolution (64 px by
            # default, for the evaluator/FID features) would hand it upsampled thumbnails of e.g. 512 px SD images
            cos = self.clip(full, prompts).tolist()
            part["per_image"]["clip_score"] = cos
            part["per_image"]["clip_score_x100"] = [100 * max(c, 0.0) for c in cos]
        return part

    def add(self, part: dict) -> None:
        """Accumulate one batch's `extract` output."""
        for k, f in part["features"].items():
            self.gen[k].update(f)
        if part["note"] and self._text_ok:
            self._text_ok = False
            self.notes.append(part["note"])
        for k, vals in part["per_image"].items():
            if k in ("clip_score", "clip_score_x100") or self._text_ok:
                self.per_image[k] += vals
        self.n += part["n"]

    # ------------------------------------------------------------------------------------------------------
    def compute(self, generation: dict | None = None, indices=None) -> dict:
        """Metrics over all images so far (or over `indices`), with CIs and provenance."""
        c, u = self.cfg, self.cfg["uncertainty"]
        idx = np.arange(self.n) if indices is None else np.asarray(indices)
        n = len(idx)
        if n < 2:
            raise ValueError(f"need at least 2 generated images to score, got {n}")
        metrics, ci, hib, impl, extr = {}, {}, {}, {}, {}
        source = self.source if self.source is not None else build_source(c["reference"])
        fd_reps = min(u["bootstrap"], u["fd_bootstrap"])
        ref_info = {}
        for name, e in self.extractors.items():
            fd_name, kid_name = distance_names(name)
            rstats, info = reference_stats(source, e, c["reference"]["n"], resolution=c["resolution"],
                                           resize=c["resize"], cache_dir=c["cache_dir"], batch_size=c["batch_size"],
                                           keep=c["reference"]["keep"], progress=self.progress)
            ref_info[name] = {"path": info["path"], "from_cache": info["from_cache"]}
            feats = self.gen[name].features[torch.as_tensor(idx)].double().numpy()
            fd, lo, hi = frechet_distance_ci(feats, rstats.mean, rstats.cov, fd_reps, u["level"], u["seed"])
            metrics[fd_name], ci[fd_name] = fd, [lo, hi]
            hib[fd_name] = False
            impl[fd_name] = FD_IMPL
            if rstats.keep:
                rf = rstats.features.float()
                kid, kid_std, lo, hi = kid_ci(feats, rf, c["kid"]["subsets"], c["kid"]["bootstrap_subsets"],
                                              c["kid"]["subset_size"], fd_reps // 5, u["level"], u["seed"],
                                              self.kid_device)
                metrics[kid_name], metrics[f"{kid_name}_std"] = kid, kid_std
                ci[kid_name] = [lo, hi]
                hib[kid_name] = hib[f"{kid_name}_std"] = False
                impl[kid_name] = KID_IMPL.format(s=c["kid"]["subsets"],
                                                 m=kid_subset_size(c["kid"]["subset_size"], n, len(rf)))
            if c["floor"]:
                floors, floor_ci, floor_info, notes = real_floor(source, e, n, rstats, c, fd_name, kid_name,
                                                                 kid_device=self.kid_device, progress=self.progress)
                self.notes += notes
                metrics.update(floors)
                hib.update(dict.fromkeys(floors, False))
                ci.update(floor_ci)
                ref_info[name].update(floor_info)
            extr[name] = {"name": e.name, "dim": e.dim, "weights_sha256": e.weights_sha256, "resize": e.resize}
            if name != "evaluator":
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
        # per-image metrics can still drop out at run time (e.g. prompts outside the evaluator's vocabulary)
        primary = self.primary if self.primary in metrics else c["fid"]["fallback"]
        if primary not in metrics:
            raise ValueError(f"primary metric {self.primary!r} and its fallback {c['fid']['fallback']!r} were not "
                             f"computed for these images (computed: {sorted(metrics)}; notes: {self.notes}); set "
                             f"metrics.primary to one of the computed metrics")
        prim_ext = "inception" if primary in ("fid", "kid_inception") else "evaluator"
        g = generation or {}
        ext = extr.get(prim_ext, {})
        provenance = {
            "implementation": impl.get(primary, "mean over images" if primary in PER_IMAGE else None),
            "extractor": ext.get("name"), "weights_sha256": ext.get("weights_sha256"),
            "resize": f"{c['resize']} to {c['resolution']}px, then {ext.get('resize')}",
            "n": n, "seeds": g.get("seeds"), "sampler": g.get("sampler"), "sample_steps": g.get("sample_steps"),
            "guidance_scale": g.get("guidance_scale"),
            "primary_metric": primary, "fid_status": self.fid_status, "implementations": impl, "extractors": extr,
            "reference": {"dataset": source.id, "n": c["reference"]["n"], "resolution": c["resolution"],
                          "cache": ref_info},
            "clip": ({"backbone": self.clip.backbone, "scale": "clip_score: raw cosine; clip_score_x100: "
                      "100*max(cos,0) (torchmetrics)",
                      "resize": clip_hf.clip_resize(getattr(self.clip, "processor", None))} if self.clip else None),
            "clip_evaluator": ("tiny_sd evaluator contrastive towers, raw cosine" if "clip_evaluator" in metrics
                               else None),
            "uncertainty": {"ci": f"percentile bootstrap over generated images, reference fixed, level "
                            f"{u['level']}; FD/KID bootstrap re-centred on the point estimate",
                            "replicates": u["bootstrap"], "fd_replicates": fd_reps,
                            "kid_replicates": fd_reps // 5, "seed": u["seed"],
                            "floor_ci": f"Student-t over {c['floor_draws']} disjoint real sets at the generated N"},
            "versions": versions(), "notes": list(self.notes),
        }
        return {"metrics": metrics, "ci": ci, "higher_is_better": hib, "provenance": provenance, "primary": primary}


def score_images(images: torch.Tensor, prompts: list[str], cfg=None, *, generation: dict | None = None,
                 **scorer_kwargs) -> dict:
    """One-shot scoring of generated images (N,3,H,W) in [0,1] with their prompts; see `Scorer`."""
    check_images(images)      # before the scorer loads extractors and reference statistics
    s = Scorer(cfg, **scorer_kwargs)
    bs = s.cfg["batch_size"]
    for i in range(0, len(images), bs):
        s.update(images[i:i + bs], prompts[i:i + bs])
    return s.compute(generation)


def evaluate_pipeline(pipe, prompts: list[str], seeds: list[int], cfg=None, *, sample_steps: int = 25,
                      guidance_scale: float = 7.5, batch_size: int = 16, keep_images: int = 0,
                      progress: bool = True, **scorer_kwargs) -> dict:
    """Sample `pipe` for every (seed, prompt) with per-image seeds and score the images.

    Returns score_images' dict for all images pooled, plus ``per_seed`` ({seed: metrics}), ``seed_ci``
    ({metric: [mean, lo, hi]} over seeds, Student t) and, with keep_images=k, the first k images as ``images``.
    """
    dev = getattr(pipe, "device", torch.device("cpu"))
    scorer_kwargs.setdefault("device", dev)  # extractors run where the pipeline samples
    scorer = Scorer(cfg, progress=progress, **scorer_kwargs)
    kept, t0, ranges = [], time.time(), {}
    bar = tqdm(total=len(seeds) * n_batches(len(prompts), batch_size), desc="sampling", disable=not progress)
    for s in seeds:
        lo = scorer.n
        for b, imgs in sample_batches(pipe, pipe.unet, prompts, image_seeds(s, len(prompts)),
                                      sample_steps=sample_steps, guidance_scale=guidance_scale,
                                      batch_size=batch_size, progress=False):
            scorer.update(imgs, prompts[b * batch_size:(b + 1) * batch_size])
            if len(kept) * batch_size < keep_images:
                kept.append(imgs)
            bar.update(1)
        ranges[s] = np.arange(lo, scorer.n)
    bar.close()
    gen = {"seeds": list(seeds), "sampler": type(pipe.scheduler).__name__, "sample_steps": sample_steps,
           "guidance_scale": guidance_scale}
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
