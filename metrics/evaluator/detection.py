"""Object detection and the scoring rule: foreground components, their crops, and how a prompt is judged against
the detected objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from tiny_sd import shapes


def to_u8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float in [0,1] -> (N,H,W,3) uint8, rounded."""
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


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
