"""CLIP score with a Hugging Face CLIP from a local directory or the HF cache (CLIPScore: Hessel et al. 2021).

We report the raw cosine between image and caption embeddings (`clip_score`), plus torchmetrics' scale
`clip_score_x100 = 100 * max(cos, 0)` (Hessel et al. use w = 2.5 instead of 100; papers such as BK-SDM quote the
raw cosine, e.g. 0.2958 with ViT-g/14). The backbone name, scale and the processor's resize (`clip_resize`) are
always written into the provenance. Nothing is downloaded: `local_files_only=True` always (so HF_HUB_OFFLINE is
respected trivially).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F


class ClipModelMissing(FileNotFoundError):
    """The configured CLIP is neither a local directory nor in the HF cache."""


def load_hf_clip(name_or_path: str, device=None):
    """(CLIPModel, CLIPProcessor) from a local dir or the HF cache; ClipModelMissing with a clear message."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as e:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise ClipModelMissing(
            f"CLIP model {name_or_path!r} is not a local directory and is not in the Hugging Face cache ({cache}); "
            f"CLIP score never downloads (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). "
            f"On a connected machine run `huggingface-cli download {name_or_path}` (or save_pretrained to a folder) "
            f"and set metrics.clip.model=<that id or folder>. Cause: {type(e).__name__}: {str(e)[:200]}") from None
    return model.eval().requires_grad_(False).to(device or "cpu"), processor


class HFClipScorer:
    """Callable: (images (N,3,H,W) in [0,1], captions) -> (N,) raw cosine similarity."""

    def __init__(self, name_or_path: str, device=None):
        self.model, self.processor = load_hf_clip(name_or_path, device)
        self.backbone = Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path
        self.name_or_path = name_or_path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        # the processor does CLIP's own resize / centre crop / normalisation, from uint8 like torchmetrics
        u8 = (images.clamp(0, 1) * 255).round().byte().cpu()
        inputs = self.processor(text=list(captions), images=list(u8), return_tensors="pt", padding=True,
                                truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        return (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1).cpu()


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
