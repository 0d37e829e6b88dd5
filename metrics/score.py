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
from .kid import kid_subset_size, kid_subsets
from .provenance import versions
from .stats import FeatureStats
from foundation.pipeline import native_resolution
from foundation.stats import bootstrap_ci
from foundation.stats import t_interval as mean_ci

FD_IMPL = "unet_lab.metrics.frechet (float64; Tr sqrt via eigh of sqrt(S1) S2 sqrt(S1))"
KID_IMPL = "torchmetrics.image.kid.poly_mmd (cubic polynomial kernel, unbiased MMD^2), mean over {s} subsets of {m}"

# per-image metrics: name -> higher is better
PER_IMAGE = {"clip_evaluator": True, "colour_acc": True, "shape_acc": True, "object_acc": True,
             "all_correct": True, "count_correct": True, "relation_acc": True, "clip_score": True,
             "clip_score_x100": True}


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
            from tiny_sd.evaluator import load_evaluator

            from .extractors import EvaluatorExtractor

            self.evaluator = evaluator if evaluator is not None else load_evaluator(device)
            self.extractors.setdefault("evaluator", EvaluatorExtractor(self.evaluator))
        if c["fid"]["enabled"] and "inception" not in self.extractors:
            from .inception import InceptionExtractor, InceptionWeightsMissing

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
            from .clip_hf import ClipModelMissing, HFClipScorer

            try:
                self.clip = HFClipScorer(c["clip"]["model"], device)
            except ClipModelMissing as e:
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
                impl[kid_name] = KID_IMPL.format(s=c["kid"]["subsets"],
                                                 m=kid_subset_size(c["kid"]["subset_size"], n, len(rf)))
            if c["floor"]:
                self._floor(source, e, n, rstats, fd_name, kid_name, metrics, hib, ci, ref_info[name])
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
            "n": n, "seeds": g.get("seeds"), "sampler": g.get("sampler"), "steps": g.get("steps"),
            "cfg_scale": g.get("cfg_scale"),
            "primary_metric": primary, "fid_status": self.fid_status, "implementations": impl, "extractors": extr,
            "reference": {"dataset": source.id, "n": c["reference"]["n"], "resolution": c["resolution"],
                          "cache": ref_info},
            "clip": ({"backbone": self.clip.backbone, "scale": "clip_score: raw cosine; clip_score_x100: "
                      "100*max(cos,0) (torchmetrics)",
                      "resize": clip_resize(getattr(self.clip, "processor", None))} if self.clip else None),
            "clip_evaluator": ("tiny_sd evaluator contrastive towers, raw cosine" if "clip_evaluator" in metrics
                               else None),
            "uncertainty": {"ci": f"percentile bootstrap over generated images, reference fixed, level "
                            f"{u['level']}; FD/KID bootstrap re-centred on the point estimate",
                            "replicates": u["bootstrap"], "fd_replicates": min(u["bootstrap"], u["fd_bootstrap"]),
                            "kid_replicates": min(u["bootstrap"], u["fd_bootstrap"]) // 5, "seed": u["seed"],
                            "floor_ci": f"Student-t over {c['floor_draws']} disjoint real sets at the generated N"},
            "versions": versions(), "notes": list(self.notes),
        }
        return {"metrics": metrics, "ci": ci, "higher_is_better": hib, "provenance": provenance, "primary": primary}

    def _floor(self, source, e, n, rstats, fd_name, kid_name, metrics, hib, ci, info) -> None:
        """Real-vs-real at the generated N: disjoint sets of n real images following the reference, each against it.

        One draw is noisy at small N, so the floor is the mean over ``floor_draws`` of them, with a Student-t CI over
        draws and every draw's value in the provenance: a generated FD is at the floor when it sits inside that
        spread, not below one number.
        """
        c = self.cfg
        start, want = c["reference"]["n"], max(1, int(c.get("floor_draws", 1)))
        draws = min(want, (len(source) - start) // n) if n else 0
        if draws < 1:
            self.notes.append(f"{fd_name}_floor skipped: {source.id} has {len(source)} images, the floor needs "
                              f"{start + n} (reference {start} + generated {n})")
            return
        if draws < want:
            self.notes.append(f"{fd_name}_floor over {draws} draws, not {want}: {source.id} has {len(source)} images")
        fds, kids, cached = [], [], []
        ref_features = rstats.features.float() if rstats.keep else None  # kept in float16: converted once, not per draw
        for k in range(draws):
            fstats, finfo = ref.reference_stats(source, e, n, start=start + k * n, resolution=c["resolution"],
                                                resize=c["resize"], cache_dir=c["cache_dir"],
                                                batch_size=c["batch_size"], keep="float32", progress=self.progress)
            cached.append(finfo["from_cache"])
            fds.append(frechet_distance_from_moments(fstats.mean, fstats.cov, rstats.mean, rstats.cov))
            if rstats.keep:
                kids.append(float(kid_subsets(fstats.features, ref_features, c["kid"]["subsets"],
                                              c["kid"]["subset_size"], c["uncertainty"]["seed"],
                                              self.kid_device).mean()))
        info["floor_from_cache"] = all(cached)
        info["floor_draws"] = {"n": n, "draws": draws, "first_image": start, fd_name: fds, kid_name: kids or None}
        for name, values in ((f"{fd_name}_floor", fds), (f"{kid_name}_floor", kids)):
            if values:
                m, lo, hi = mean_ci(values, c["uncertainty"]["level"])
                metrics[name], hib[name] = m, False
                if len(values) > 1:
                    ci[name] = [lo, hi]


def unloadable_inception_message(configured, err: Exception) -> str:
    """Why FID is off when the Inception weights file exists but cannot be used (truncated download, wrong file)."""
    from .inception import ENV_VAR, INCEPTION_FILE, INCEPTION_URL, OFFICIAL_SHA256_PREFIX, candidate_paths

    # the file the extractor tried: the first existing candidate, exactly as find_inception_weights picks it
    path = next((p for p in candidate_paths(configured) if p.is_file()), None)
    return (f"the Inception weights file {path} could not be loaded ({type(err).__name__}: {str(err)[:200]}); it is "
            f"probably truncated or not {INCEPTION_FILE}. Replace it with a fresh copy from {INCEPTION_URL} (its "
            f"sha256 starts with {OFFICIAL_SHA256_PREFIX}) and point metrics.fid.weights=PATH or {ENV_VAR}=PATH "
            f"at it")


def producible_metrics(extractors, *, kid: bool, evaluator: bool, clip: bool) -> set[str]:
    """Metric names a scorer with these parts can produce, known before any image (the naming of `compute`).

    Floors are left out (they also need enough reference images); the evaluator's per-image metrics are
    included although prompts outside its vocabulary drop them at run time.
    """
    out = set()
    for name in extractors:
        fd, kid_name = ("fd_evaluator", "kid_evaluator") if name == "evaluator" else ("fid", "kid_inception")
        out |= {fd, kid_name, f"{kid_name}_std"} if kid else {fd}
    if evaluator:
        out |= {k for k in PER_IMAGE if not k.startswith("clip_score")}
    if clip:
        out |= {"clip_score", "clip_score_x100"}
    return out


def choose_primary(primary: str, fallback: str, producible: set[str], fid_status: str) -> str:
    """`primary` when it can be computed, else `fallback`; a ValueError naming both when neither can."""
    if primary in producible:
        return primary
    if fallback in producible:
        return fallback
    raise ValueError(f"metrics.primary={primary!r} cannot be computed (FID: {fid_status}) and neither can its "
                     f"fallback metrics.fid.fallback={fallback!r} (e.g. the evaluator is disabled); this scorer can "
                     f"compute {sorted(producible) or 'nothing'}: enable what the fallback needs or set "
                     f"metrics.primary / metrics.fid.fallback to one of those")


def clip_resize(processor) -> str | None:
    """What the CLIP processor does to each full-resolution image before the encoder (None if unknown)."""
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        return None
    size, crop, resample = (getattr(ip, k, None) for k in ("size", "crop_size", "resample"))
    steps = []
    if getattr(ip, "do_resize", False) and _size_text(size):
        steps.append(f"resize {_size_text(size)}" + ("" if resample is None else f" ({_resample_name(resample)})"))
    if getattr(ip, "do_center_crop", False) and _size_text(crop):
        steps.append(f"centre crop {_size_text(crop)}")
    return f"CLIP processor on the full-resolution image: {', '.join(steps) or 'no resize'}"


def _size_text(size) -> str | None:
    """'shortest edge to 224' / '224x224' from a processor size (a SizeDict in transformers 5, a dict before)."""
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    if get("shortest_edge"):
        return f"shortest edge to {get('shortest_edge')}"
    return f"{get('height')}x{get('width')}" if get("height") and get("width") else None


def _resample_name(resample) -> str:
    """'bicubic' for PIL's enum or its integer code (processors store either)."""
    from PIL import Image

    try:
        return Image.Resampling(resample).name.lower()
    except (ValueError, TypeError):
        return str(resample)


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


def score_images(images: torch.Tensor, prompts: list[str], cfg=None, *, generation: dict | None = None,
                 **scorer_kwargs) -> dict:
    """One-shot scoring of generated images (N,3,H,W) in [0,1] with their prompts; see `Scorer`."""
    check_images(images)      # before the scorer loads extractors and reference statistics
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
    size = native_resolution(pipe)
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
