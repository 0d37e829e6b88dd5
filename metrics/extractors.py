"""Feature extractors for FD/KID: a common small interface (name, dim, weights_sha256, resize, __call__).

`evaluator`: the tiny_sd evaluator's CNN image features (shapes-world FD/KID; always available, shipped).
`inception`: Inception-v3 pool3 (FID/KID proper; needs the local weights file, see `metrics.inception`).
"""

from __future__ import annotations

import torch

from .evaluator import load_evaluator


class EvaluatorExtractor:
    def __init__(self, evaluator=None, device=None):
        self.evaluator = evaluator if evaluator is not None else load_evaluator(device)
        self.dim = self.evaluator.cfg["feature_dim"]
        self.weights_sha256 = self.evaluator.weights_sha256 or "unhashed"
        self.resize = f"bilinear antialias to {self.evaluator.cfg['image_size']} (evaluator input)"
        self.name = f"tiny_sd-evaluator/image-{self.dim}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluator.image_features(images).float()
