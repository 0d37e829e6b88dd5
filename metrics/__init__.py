"""Metrics for generated images: FID/KID (Inception, local weights only), FD/KID in the tiny_sd evaluator's
feature space, attribute accuracy, CLIP scores; cached reference statistics, bootstrap/seed CIs, provenance.
See docs/metrics.md.
"""

from ._fidelity import ensure_torch_fidelity as _ensure_torch_fidelity

_ensure_torch_fidelity()  # torchmetrics.image imports torch-fidelity, whose __init__ needs torchvision

from .clip_hf import ClipModelMissing, HFClipScorer, load_hf_clip  # noqa: E402
from .config import load_config  # noqa: E402
from .data import FolderSource, ShapesSource, build_source, resize_images  # noqa: E402
from .frechet import (frechet_distance, frechet_distance_from_moments, frechet_distance_to_moments,  # noqa: E402
                      mean_cov)
from .inception import InceptionExtractor, InceptionWeightsMissing, find_inception_weights  # noqa: E402
from .kid import kernel_inception_distance, kid_subsets  # noqa: E402
from .reference import reference_stats  # noqa: E402
from .score import Scorer, evaluate_pipeline, image_seed, paired_latents, score_images  # noqa: E402
from .stats import FeatureStats  # noqa: E402
from foundation.stats import bootstrap_ci  # noqa: E402
from foundation.stats import t_interval as mean_ci  # noqa: E402

__all__ = [
    "ClipModelMissing", "FeatureStats", "FolderSource", "HFClipScorer", "InceptionExtractor",
    "InceptionWeightsMissing", "Scorer", "ShapesSource", "bootstrap_ci", "build_source", "evaluate_pipeline",
    "find_inception_weights", "frechet_distance", "frechet_distance_from_moments", "frechet_distance_to_moments",
    "image_seed", "paired_latents", "kernel_inception_distance", "kid_subsets", "load_config", "load_hf_clip", "mean_ci", "mean_cov",
    "reference_stats", "resize_images", "score_images",
]
