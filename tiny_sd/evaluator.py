"""An independent evaluator for the shapes world: image features, image-text similarity, object attributes.

Why a separate model: scoring tiny_sd with its own conditioner (a CLIP ViT trained on the same pairs) would
let the generator grade itself. This evaluator is trained separately, with a different seed (`SEED`), and a
different image architecture (small CNNs rather than a ViT). It provides

* ``image_features``: a global CNN embedding (the penultimate layer of the contrastive image tower), the
  feature space of "FD/KID (evaluator)" -- the shapes-world analogue of Inception pool3 features for FID;
* ``text_features`` / ``clip_score``: a CLIP-style contrastive pair (Radford et al. 2021) with its own tiny
  word-level text transformer over the shapes vocabulary; ``clip_score`` is the raw cosine (CLIPScore,
  Hessel et al. 2021, without the 100x / 2.5x rescaling);
* ``detect_objects`` / ``attribute_scores``: foreground = pixels far from the known background colour,
  connected components (scipy.ndimage), each component cropped and classified by a small CNN into colour (6)
  and shape (4). The crop classifier is trained on *augmented* real crops (noise, blur, colour jitter, scale)
  so that it transfers to the soft, noisy edges of generated images.

``python -m tiny_sd.evaluator --train`` rebuilds the shipped weights (fp16 safetensors, config and a training
record with seed, config and git revision) in a few CPU minutes; ``--eval`` prints held-out accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from foundation.io import git_revision

from . import shapes

WEIGHTS_DIR = Path(__file__).parent / "weights" / "evaluator"
SEED = 20240611  # deliberately unrelated to the conditioner's training seed
COLOURS = list(shapes.COLOURS)
SHAPES = list(shapes.SHAPES)
MAX_WORDS = 16  # longest shapes caption has 14 words

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


# ---------------------------------------------------------------------------------------------
# networks

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
    def __init__(self, cfg: dict):
        super().__init__()
        self.image = ImageTower(cfg["feature_dim"])
        self.image_proj = nn.Linear(cfg["feature_dim"], cfg["embed_dim"])
        self.text = TextTower(len(shapes.vocabulary()), cfg["text_width"])
        self.text_proj = nn.Linear(cfg["text_width"], cfg["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.classifier = CropClassifier(cfg["crop_size"])


# ---------------------------------------------------------------------------------------------
# text and image preprocessing (pure functions)

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


def foreground_components(image_u8: np.ndarray, threshold: float, min_area: int) -> list[np.ndarray]:
    """Boolean masks of connected foreground components (pixels far from the background colour)."""
    dist = np.linalg.norm(image_u8.astype(np.float32) - np.array(shapes.BACKGROUND, np.float32), axis=-1)
    fg = ndimage.binary_opening(dist > threshold, structure=np.ones((2, 2)))
    labels, n = ndimage.label(fg)
    if n == 0:
        return []
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return [labels == k + 1 for k in range(n) if areas[k] >= min_area]


def crop_component(image: torch.Tensor, mask: np.ndarray, crop_size: int, pad: int) -> torch.Tensor:
    """Square crop (4, crop_size, crop_size) around a component: RGB from `image` (3,H,W) + the mask."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2 + pad
    bg = torch.tensor(shapes.BACKGROUND, dtype=image.dtype).view(3, 1, 1) / 255
    x = torch.cat([image - bg, torch.from_numpy(mask).to(image.dtype)[None]])  # background -> 0 for zero padding
    # affine_grid maps the output square onto [cx-half, cx+half] x [cy-half, cy+half] of the input
    h, w = mask.shape
    theta = torch.tensor([[2 * half / w, 0, 2 * cx / w - 1], [0, 2 * half / h, 2 * cy / h - 1]], dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, 4, crop_size, crop_size], align_corners=False)
    out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    out[:3] += bg
    return out


# ---------------------------------------------------------------------------------------------
# augmentation: push real images towards what a small VAE + diffusion model produces

def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma (N,)), 5x5 separable kernels applied as one grouped conv."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 5)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0).view(n * c, 1, 1, 5)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), kx.transpose(2, 3), groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random scale (0.85-1.15) and shift, blur (sigma 0-1.2), desaturation (0-30% towards grey), colour jitter
    (+-10% gain, +-0.05 offset per channel) and noise (std 0-0.05).

    Washed-out, slightly shifted colours are the typical failure of small VAEs/diffusion models; training the
    crop classifier over this neighbourhood of each prototype colour makes its decisions there well defined
    (close to nearest-prototype) instead of arbitrary extrapolation.
    """
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    s = 1 / (0.85 + 0.3 * u(n))
    t = (u(n, 2) - 0.5) * 0.1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = _gaussian_blur(x, 1.2 * u(n))
    grey = x.mean(1, keepdim=True)
    x = x + (grey - x) * 0.3 * u(n, 1, 1, 1)
    x = x * (1 + (u(n, 3, 1, 1) - 0.5) * 0.2) + (u(n, 3, 1, 1) - 0.5) * 0.1
    x = x + torch.randn(x.shape, generator=g) * 0.05 * u(n, 1, 1, 1)
    return x.clamp(0, 1)


def _u8(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the evaluator

@dataclass
class DetectedObject:
    colour: str
    shape: str
    cx: float  # pixel coordinates in the evaluator's 64x64 frame
    cy: float
    area: int
    colour_prob: float
    shape_prob: float
    bbox: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # (y0, x0, y1, x1)


def relation_holds(rel: str, a: DetectedObject, b: DetectedObject) -> bool:
    """`a rel b` by the dominant axis of the centre offset (shapes' rule, without the sampling margin).

    On detected pixel centroids, not the sampler's box centres (a triangle's centroid sits below its box centre),
    and with no margin on the dominant axis, so a few near-diagonal real pairs fail it: its score on real images
    is the relation measure's ceiling (benchmarks/tiny_sd_quality.py prints it)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    horizontal = abs(dx) > abs(dy)
    return {"left of": horizontal and dx > 0, "right of": horizontal and dx < 0,
            "above": not horizontal and dy > 0, "below": not horizontal and dy < 0}[rel]


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
        u8 = _u8(x)
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


def score_prompt(prompt: str, detected: list[DetectedObject]) -> dict:
    """Pure scoring of one prompt against detected objects (see `ShapesEvaluator.attribute_scores`)."""
    named = shapes.parse_prompt(prompt)
    rel = shapes.prompt_relation(prompt)
    n_detected = len(detected)
    # judge the k most salient components only (see attribute_scores); stable sort keeps detection order on ties
    detected = sorted(detected, key=lambda d: -d.area)[: len(named)]
    match: dict[int, int] = {}
    if named and detected:
        area = np.array([d.area for d in detected], np.float64)
        gain = np.array([[2.0 * (d.colour == c) + 1.0 * (d.shape == s) for d in detected] for c, s, _ in named])
        gain += 1e-3 * area / area.max()  # prefer the larger component when attributes tie
        rows, cols = linear_sum_assignment(-gain)
        match = dict(zip(rows.tolist(), cols.tolist()))
    objs = []
    for k, (c, s, _) in enumerate(named):
        d = detected[match[k]] if k in match else None
        c_ok, s_ok = bool(d is not None and d.colour == c), bool(d is not None and d.shape == s)
        objs.append({"colour": c, "shape": s, "colour_ok": c_ok, "shape_ok": s_ok, "found": c_ok and s_ok})
    n = max(len(named), 1)
    rel_ok = None
    if rel is not None and len(named) == 2:
        rel_ok = bool(objs[0]["found"] and objs[1]["found"]
                      and relation_holds(rel, detected[match[0]], detected[match[1]]))
    return {"prompt": prompt, "objects": objs, "n_detected": n_detected,
            "colour_acc": sum(o["colour_ok"] for o in objs) / n, "shape_acc": sum(o["shape_ok"] for o in objs) / n,
            "object_acc": sum(o["found"] for o in objs) / n, "all_correct": all(o["found"] for o in objs),
            "count_correct": n_detected == len(named), "relation_correct": rel_ok}


def load_evaluator(device=None, path: str | Path | None = None) -> ShapesEvaluator:
    """The shipped evaluator (fp16 safetensors, run in float32) on `device` (default: CPU), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_DIR
    wfile = path / "model.safetensors"
    if not wfile.exists():
        raise FileNotFoundError(f"evaluator weights {wfile} are missing; rebuild them with "
                                f"`python -m tiny_sd.evaluator --train`")
    cfg = {**DEFAULT_CONFIG, **json.loads((path / "config.json").read_text())}
    ev = ShapesEvaluator(cfg)
    ev.net.load_state_dict({k: v.float() for k, v in load_file(str(wfile)).items()})
    ev.weights_sha256 = hashlib.sha256(wfile.read_bytes()).hexdigest()
    return ev.eval().requires_grad_(False).to(device or "cpu")


# ---------------------------------------------------------------------------------------------
# training

def _images(seed: int, n: int, offset: int = 0) -> tuple[torch.Tensor, list[str], list[shapes.Sample]]:
    imgs, caps, samples = shapes.batch(seed, range(offset, offset + n))
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, caps, samples


def object_crops(x: torch.Tensor, samples: list[shapes.Sample], cfg: dict):
    """Crops of detected components with the colour/shape of the ground-truth object they overlap most.

    Detection runs on the (augmented) image exactly as at evaluation time, so training sees the same crops.
    Returns crops (M,4,S,S), colour ids (M,), shape ids (M,), and for each ground-truth object its label
    or -1 when no component claims it (a miss).
    """
    u8 = _u8(x)
    crops, cols, shps, hits = [], [], [], []
    for i, s in enumerate(samples):
        claimed = np.zeros(len(s.objects), bool)
        for m in foreground_components(u8[i], cfg["fg_threshold"], cfg["min_area"]):
            overlap = (s.object_masks & m).sum((1, 2))
            k = int(overlap.argmax())
            if overlap[k] < 0.5 * m.sum():
                continue
            claimed[k] = True
            crops.append(crop_component(x[i], m, cfg["crop_size"], cfg["crop_pad"]))
            cols.append(COLOURS.index(s.objects[k].colour))
            shps.append(SHAPES.index(s.objects[k].shape))
        hits.append(claimed)
    return torch.stack(crops), torch.tensor(cols), torch.tensor(shps), hits


def heldout_accuracy(ev: ShapesEvaluator, n: int = 500, seed: int = shapes.HELDOUT_SEED,
                     augment_seed: int | None = None) -> dict:
    """Colour/shape accuracy per ground-truth object on real held-out images (a missed object counts wrong).

    With `augment_seed`, the images are first degraded by `augment` (a robustness check, not the bar).
    """
    x, _, samples = _images(seed, n)
    if augment_seed is not None:
        x = augment(x, torch.Generator().manual_seed(augment_seed))
    det = ev.detect_objects(x)
    c_ok = s_ok = total = 0
    for s, d in zip(samples, det):
        for o in s.objects:
            total += 1
            near = [q for q in d if s.object_masks[s.objects.index(o)][int(q.cy), int(q.cx)]]
            if near:
                c_ok += near[0].colour == o.colour
                s_ok += near[0].shape == o.shape
    return {"colour_acc": c_ok / total, "shape_acc": s_ok / total, "n_objects": total, "n_images": n, "seed": seed}


def train(cfg: dict | None = None, out: Path = WEIGHTS_DIR, progress: bool = True) -> dict:
    """Train the crop classifier, then the contrastive towers; write weights, config and record to `out`."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    cfg = {**DEFAULT_CONFIG, **(cfg or {})}
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    ev = ShapesEvaluator(cfg)
    net = ev.net

    # 1) crop classifier on detected components of augmented real images
    x, _, samples = _images(shapes.TRAIN_SEED, cfg["clf_images"])
    parts = [object_crops(augment(x, g) if p else x, samples, cfg) for p in range(cfg["clf_aug_passes"] + 1)]
    crops = torch.cat([p[0] for p in parts])
    cols, shps = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    opt = torch.optim.AdamW(net.classifier.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["clf_steps"])
    bar = tqdm(range(cfg["clf_steps"]), desc="evaluator: crop classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(crops), (cfg["clf_batch"],), generator=g)
        b = crops[idx]
        b = torch.cat([(b[:, :3] + torch.randn(b[:, :3].shape, generator=g) * 0.03).clamp(0, 1), b[:, 3:]], 1)
        c, s = net.classifier(b)
        loss = F.cross_entropy(c, cols[idx]) + F.cross_entropy(s, shps[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    # 2) contrastive image/text towers (CLIP's symmetric InfoNCE; duplicate captions in a batch are all positives)
    x, caps, _ = _images(shapes.TRAIN_SEED, cfg["clip_images"], offset=cfg["clf_images"])
    ids = tokenize(caps)
    cap_id = torch.tensor([hash(c) for c in caps])
    params = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["clip_steps"])
    bar = tqdm(range(cfg["clip_steps"]), desc="evaluator: contrastive towers", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(x), (cfg["clip_batch"],), generator=g)
        img = F.normalize(net.image_proj(net.image(augment(x[idx], g))), dim=-1)
        txt = F.normalize(net.text_proj(net.text(ids[idx])), dim=-1)
        logits = net.logit_scale.exp().clamp(max=100) * img @ txt.T
        pos = (cap_id[idx][:, None] == cap_id[idx][None]).float()
        target = pos / pos.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    ev.eval()
    acc = {"clean": heldout_accuracy(ev), "augmented": heldout_accuracy(ev, augment_seed=cfg["seed"] + 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    record = {"seed": cfg["seed"], "config": cfg, "git_revision": git_revision(Path(__file__).parent) or "unknown", "seconds": round(time.time() - t0, 1),
              "torch": torch.__version__, "heldout_accuracy": acc,
              "n_parameters": sum(p.numel() for p in net.parameters()),
              "command": "python -m tiny_sd.evaluator --train"}
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tiny_sd.evaluator", description=__doc__.split("\n")[0])
    ap.add_argument("--train", action="store_true", help="rebuild the shipped evaluator weights")
    ap.add_argument("--eval", action="store_true", help="print held-out accuracy of the shipped weights")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: keep 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        rec = train({"seed": args.seed}, args.out)
        print(json.dumps({k: rec[k] for k in ("seed", "seconds", "heldout_accuracy", "n_parameters")}, indent=2))
    if args.eval or not args.train:
        print(json.dumps(heldout_accuracy(load_evaluator(path=args.out)), indent=2))


if __name__ == "__main__":
    main()
