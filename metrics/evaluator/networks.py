"""The evaluator's networks (pure modules): a CNN image tower, a one-layer word-level text transformer and a crop
classifier, plus the text and image preprocessing they share."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tiny_sd import shapes

COLOURS = list(shapes.COLOURS)
SHAPES = list(shapes.SHAPES)
MAX_WORDS = 16  # longest shapes caption has 14 words


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ImageTower(nn.Module):
    """64x64 RGB -> feature (feature_dim). A plain CNN; the flatten keeps position (needed for relations)."""

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.convs = nn.Sequential(_conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 32), _conv(32, 64, 2),
                                   _conv(64, 128, 2))  # -> (128, 4, 4)
        self.fc = nn.Linear(128 * 16, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x * 2 - 1).flatten(1))


class TextTower(nn.Module):
    """Word-level tokens of the shapes vocabulary -> one transformer layer -> mean pool."""

    def __init__(self, vocab_size: int, width: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab_size + 1, width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(MAX_WORDS, width) * 0.02)
        self.layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.layer(self.tok(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)


class CropClassifier(nn.Module):
    """(RGB + component mask) crop -> colour logits (6), shape logits (4)."""

    def __init__(self, crop_size: int = 32):
        super().__init__()
        self.convs = nn.Sequential(_conv(4, 16), nn.MaxPool2d(2), _conv(16, 32), nn.MaxPool2d(2), _conv(32, 64),
                                   nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(64 * (crop_size // 8) ** 2, 128), nn.SiLU())
        self.colour = nn.Linear(128, len(COLOURS))
        self.shape = nn.Linear(128, len(SHAPES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.convs(x * 2 - 1).flatten(1))
        return self.colour(h), self.shape(h)


class EvaluatorNet(nn.Module):
    """All trained parts: the contrastive image/text towers with their projections (CLIP-style, Radford et al.
    2021) and the crop classifier."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.image = ImageTower(cfg["feature_dim"])
        self.image_proj = nn.Linear(cfg["feature_dim"], cfg["embed_dim"])
        self.text = TextTower(len(shapes.vocabulary()), cfg["text_width"])
        self.text_proj = nn.Linear(cfg["text_width"], cfg["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.classifier = CropClassifier(cfg["crop_size"])


def tokenize(captions: list[str]) -> torch.Tensor:
    """Word ids (N, MAX_WORDS), 0 = padding; ValueError on words outside the shapes vocabulary."""
    vocab = {w: i + 1 for i, w in enumerate(shapes.vocabulary())}
    ids = torch.zeros(len(captions), MAX_WORDS, dtype=torch.long)
    for n, cap in enumerate(captions):
        words = cap.lower().replace(",", " ").split()[:MAX_WORDS]
        bad = sorted({w for w in words if w not in vocab})
        if bad:
            raise ValueError(f"words {bad} are not in the shapes-world vocabulary: {shapes.vocabulary()}")
        ids[n, : len(words)] = torch.tensor([vocab[w] for w in words], dtype=torch.long)
    return ids


def to_model_size(images: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Validate (N,3,H,W) float in [0,1] and resize to the evaluator's resolution (antialiased bilinear)."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a float tensor (N,3,H,W) in [0,1], got {getattr(images, 'shape', type(images))}")
    images = images.float().clamp(0, 1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images
