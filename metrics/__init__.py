"""Metrics for generated images: FID/KID (Inception, local weights only), FD/KID in the tiny_sd evaluator's
feature space, attribute accuracy, CLIP scores; cached reference statistics, bootstrap/seed CIs, provenance.
See docs/metrics.md.
"""

from .clip_hf import ClipModelMissing, HFClipScorer, load_hf_clip
from .config import load_config
from .data import FolderSource, ShapesSource, build_source
from .images import resize_images
from .frechet import (frechet_distance, frechet_distance_from_moments, frechet_distance_to_moments,
                      mean_cov)
from .inception import InceptionExtractor, InceptionWeightsMissing, find_inception_weights
from .kid import kernel_inception_distance, kid_subsets
from .reference import reference_stats
from .score import Scorer, evaluate_pipeline, score_images
from .stats import FeatureStats
from foundation.sampling import image_seed, paired_latents
from foundation.stats import bootstrap_ci
from foundation.stats import t_interval as mean_ci

__all__ = [
    "ClipModelMissing", "FeatureStats", "FolderSource", "HFClipScorer", "InceptionExtractor",
    "InceptionWeightsMissing", "Scorer", "ShapesSource", "bootstrap_ci", "build_source", "evaluate_pipeline",
    "find_inception_weights", "frechet_distance", "frechet_distance_from_moments", "frechet_distance_to_moments",
    "image_seed", "paired_latents", "kernel_inception_distance", "kid_subsets", "load_config", "load_hf_clip", "mean_ci", "mean_cov",
    "reference_stats", "resize_images", "score_images",
]
