"""The evaluator as one object (`ShapesEvaluator`: features, image-text similarity, detection, attribute scores),
its configuration and the loader of the shipped weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import tiny_sd

from .detection import DetectedObject, crop_component, foreground_components, score_prompt, to_u8
from .networks import COLOURS, SHAPES, EvaluatorNet, to_model_size, tokenize

WEIGHTS_DIR = Path(tiny_sd.__file__).parent / "weights" / "evaluator"
SEED = 20240611  # deliberately unrelated to the conditioner's training seed

DEFAULT_CONFIG = {
    "image_size": 64,
    "crop_size": 32,
    "feature_dim": 128,  # image_features dimension (FD/KID space)
    "embed_dim": 64,  # joint image-text space
    "text_width": 64,
    "fg_threshold": 60.0,  # RGB distance (0-255) from the background colour that counts as foreground
    "min_area": 12,  # pixels; smaller components are noise
    "crop_pad": 3,
    # training
    "seed": SEED,
    "clf_images": 5000,
    "clf_aug_passes": 2,
    "clf_steps": 1200,
    "clf_batch": 128,
    "clip_images": 8000,
    "clip_steps": 900,
    "clip_batch": 128,
    "lr": 2e-3,
}


class ShapesEvaluator(nn.Module):
    """Loaded by `load_evaluator`; all methods take float images (N,3,H,W) in [0,1] on any device."""

    def __init__(self, cfg: dict, net: EvaluatorNet | None = None):
        super().__init__()
        self.cfg = dict(cfg)
        self.net = net if net is not None else EvaluatorNet(self.cfg)
        self.weights_sha256: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_size(images, self.cfg["image_size"]).to(self.device)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(N, feature_dim) float32 on the evaluator's device: the image tower's penultimate features."""
        return torch.cat([self.net.image(self._prep(images[i:i + batch_size]))
                          for i in range(0, len(images), batch_size)]) if len(images) else \
            torch.zeros(0, self.cfg["feature_dim"], device=self.device)

    def _embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.image_proj(self.image_features(images)), dim=-1)

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> torch.Tensor:
        """(N, embed_dim) unit-norm text embeddings."""
        ids = tokenize(list(captions)).to(self.device)
        return F.normalize(self.net.text_proj(self.net.text(ids)), dim=-1)

    @torch.no_grad()
    def clip_score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """(N,) raw cosine similarity between each image and its caption (no 100x or 2.5x scaling)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        return (self._embed_images(images) * self.text_features(captions)).sum(-1)

    @torch.no_grad()
    def detect_objects(self, images: torch.Tensor) -> list[list[DetectedObject]]:
        """Objects per image: connected foreground components, each classified by colour and shape."""
        x = self._prep(images).cpu()
        u8 = to_u8(x)
        crops, owners, comps = [], [], []
        for i in range(len(x)):
            for m in foreground_components(u8[i], self.cfg["fg_threshold"], self.cfg["min_area"]):
                crops.append(crop_component(x[i], m, self.cfg["crop_size"], self.cfg["crop_pad"]))
                owners.append(i)
                comps.append(m)
        out: list[list[DetectedObject]] = [[] for _ in range(len(x))]
        if not crops:
            return out
        cl, sl = [], []
        batch = torch.stack(crops)
        for j in range(0, len(batch), 1024):
            c, s = self.net.classifier(batch[j:j + 1024].to(self.device))
            cl.append(c.softmax(-1).cpu())
            sl.append(s.softmax(-1).cpu())
        cp, sp = torch.cat(cl), torch.cat(sl)
        for k, (i, m) in enumerate(zip(owners, comps)):
            ys, xs = np.nonzero(m)
            out[i].append(DetectedObject(
                COLOURS[int(cp[k].argmax())], SHAPES[int(sp[k].argmax())], float(xs.mean() + 0.5),
                float(ys.mean() + 0.5), int(m.sum()), float(cp[k].max()), float(sp[k].max()),
                (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)))
        return out

    def attribute_scores(self, images: torch.Tensor, prompts: list[str]) -> list[dict]:
        """Per prompt: does the image contain each named object with the right colour and shape?

        A prompt naming k objects is judged on the image's k largest detected components (its salient objects):
        letting every small blob compete would let noise pass, since an image of a dozen random coloured blobs
        almost always contains one of the named colour (a random-weights UNet then scores ~100% colour accuracy).
        Named objects (from `shapes.parse_prompt`) are matched one-to-one to those k components by the Hungarian
        algorithm, maximising 2*[colour right] + [shape right] + tiny area tie-break. Returned per prompt:
        ``objects`` (per named object: colour, shape, colour_ok, shape_ok, found), ``colour_acc``,
        ``shape_acc``, ``object_acc`` (fractions over named objects), ``all_correct`` (every named object found),
        ``count_correct`` (as many objects detected as named), ``relation_correct`` (two-object prompts with a
        relation: both found and the relation holds between them; None otherwise) and ``n_detected``.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        detections = self.detect_objects(images)
        return [score_prompt(p, d) for p, d in zip(prompts, detections)]


def load_evaluator(device=None, path: str | Path | None = None) -> ShapesEvaluator:
    """The shipped evaluator (fp16 safetensors, run in float32) on `device` (default: CPU), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_DIR
    wfile = path / "model.safetensors"
    if not wfile.exists():
        raise FileNotFoundError(f"evaluator weights {wfile} are missing; rebuild them with "
                                f"`python -m metrics.evaluator --train`")
    cfg = {**DEFAULT_CONFIG, **json.loads((path / "config.json").read_text())}
    ev = ShapesEvaluator(cfg)
    ev.net.load_state_dict({k: v.float() for k, v in load_file(str(wfile)).items()})
    ev.weights_sha256 = hashlib.sha256(wfile.read_bytes()).hexdigest()
    return ev.eval().requires_grad_(False).to(device or "cpu")
