"""Training of the evaluator on real shapes-world images, and its held-out accuracy.

The crop classifier learns from detected components of augmented images (so it transfers to generated ones), then
the contrastive towers learn CLIP's symmetric InfoNCE (Radford et al. 2021)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from foundation.io import git_revision
from foundation.training import fit
from tiny_sd import shapes

from .augment import augment
from .detection import crop_component, foreground_components, to_u8
from .model import DEFAULT_CONFIG, WEIGHTS_DIR, ShapesEvaluator
from .networks import COLOURS, SHAPES, tokenize

COMMAND = "python -m metrics.evaluator --train"


def _images(seed: int, n: int, offset: int = 0) -> tuple[torch.Tensor, list[str], list[shapes.Sample]]:
    imgs, caps, samples = shapes.batch(seed, range(offset, offset + n))
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, caps, samples


def object_crops(x: torch.Tensor, samples: list[shapes.Sample], cfg: dict):
    """Crops of detected components with the colour/shape of the ground-truth object they overlap most.

    Detection runs on the (augmented) image exactly as at evaluation time, so training sees the same crops.
    Returns crops (M,4,S,S), colour ids (M,), shape ids (M,), and for each ground-truth object its label
    or -1 when no component claims it (a miss).
    """
    u8 = to_u8(x)
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

    cfg = {**DEFAULT_CONFIG, **(cfg or {})}
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    ev = ShapesEvaluator(cfg)
    net = ev.net
    # batches are drawn from `g`, not from the step, so no checkpoints: a rerun repeats the whole run

    # 1) crop classifier on detected components of augmented real images
    x, _, samples = _images(shapes.TRAIN_SEED, cfg["clf_images"])
    parts = [object_crops(augment(x, g) if p else x, samples, cfg) for p in range(cfg["clf_aug_passes"] + 1)]
    crops = torch.cat([p[0] for p in parts])
    cols, shps = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])

    def classifier_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(crops), (cfg["clf_batch"],), generator=g)
        b = crops[idx]
        b = torch.cat([(b[:, :3] + torch.randn(b[:, :3].shape, generator=g) * 0.03).clamp(0, 1), b[:, 3:]], 1)
        c, s = net.classifier(b)
        return F.cross_entropy(c, cols[idx]) + F.cross_entropy(s, shps[idx])

    fit(net.classifier, cfg["clf_steps"], classifier_loss, lr=cfg["lr"], weight_decay=1e-4, schedule="one_cycle",
        desc="evaluator: crop classifier", progress=progress)

    # 2) contrastive image/text towers (CLIP's symmetric InfoNCE; duplicate captions in a batch are all positives)
    x, caps, _ = _images(shapes.TRAIN_SEED, cfg["clip_images"], offset=cfg["clf_images"])
    ids = tokenize(caps)
    cap_id = torch.tensor([hash(c) for c in caps])

    def contrastive_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x), (cfg["clip_batch"],), generator=g)
        img = F.normalize(net.image_proj(net.image(augment(x[idx], g))), dim=-1)
        txt = F.normalize(net.text_proj(net.text(ids[idx])), dim=-1)
        logits = net.logit_scale.exp().clamp(max=100) * img @ txt.T
        pos = (cap_id[idx][:, None] == cap_id[idx][None]).float()
        target = pos / pos.sum(1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    towers = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    fit(net, cfg["clip_steps"], contrastive_loss, lr=cfg["lr"], weight_decay=1e-4, params=towers,
        schedule="one_cycle", desc="evaluator: contrastive towers", progress=progress)

    ev.eval()
    acc = {"clean": heldout_accuracy(ev), "augmented": heldout_accuracy(ev, augment_seed=cfg["seed"] + 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    record = {"seed": cfg["seed"], "config": cfg, "git_revision": git_revision(Path(__file__).parent) or "unknown",
              "seconds": round(time.time() - t0, 1), "torch": torch.__version__, "heldout_accuracy": acc,
              "n_parameters": sum(p.numel() for p in net.parameters()), "command": COMMAND}
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
