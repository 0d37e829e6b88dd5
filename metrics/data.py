"""Reference image sources: the embedded shapes world, or an image folder with a captions file (CSV / COCO JSON).

A source yields float images (N,3,R,R) in [0,1] at the scoring resolution and their captions, by index range,
so reference statistics can be streamed batch by batch and cached per (source.id, range, ...).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_MODES = ("bilinear-antialias", "bicubic-antialias", "none")


def resize_images(images: torch.Tensor, resolution: int, mode: str = "bilinear-antialias") -> torch.Tensor:
    """Centre-crop to square, then resize to resolution x resolution; 'none' requires the size already."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {RESIZE_MODES}")
    h, w = images.shape[-2:]
    if h != w:
        s = min(h, w)
        images = images[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if images.shape[-1] == resolution:
        return images
    if mode == "none":
        raise ValueError(f"images are {h}x{w} but resize='none' and resolution={resolution}")
    out = F.interpolate(images.float(), size=(resolution, resolution), mode=mode.split("-")[0], antialias=True,
                        align_corners=False)
    return out.clamp(0, 1)


class ShapesSource:
    """Real shapes-world images of one split (default: held-out, `shapes.HELDOUT_SEED`); unbounded length."""

    def __init__(self, seed: int | None = None):
        from tiny_sd import shapes

        self.seed = shapes.HELDOUT_SEED if seed is None else int(seed)
        self.id = f"shapes(seed={self.seed})"
        self.native_resolution = shapes.IMAGE_SIZE

    def __len__(self) -> int:
        return 2**31 - 1

    def load(self, start: int, stop: int) -> tuple[torch.Tensor, list[str]]:
        from tiny_sd import shapes

        imgs, caps, _ = shapes.batch(self.seed, range(start, stop))
        return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255, caps


def _read_captions(path: Path) -> dict[str, str]:
    """{file name: caption}; CSV with columns (file_name|image|file, caption|text) or COCO captions JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    if path.suffix.lower() == ".json":
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or "images" not in d or "annotations" not in d:
            raise ValueError(f"{path} is not a COCO captions JSON (needs 'images' and 'annotations' lists)")
        names = {im["id"]: im["file_name"] for im in d["images"]}
        out: dict[str, str] = {}
        for a in d["annotations"]:  # COCO has ~5 captions per image: keep the first, deterministically
            if a["image_id"] in names:
                out.setdefault(names[a["image_id"]], a["caption"].strip())
        return out
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"captions CSV {path} has no rows")
    fcol = next((c for c in ("file_name", "image", "file", "filename") if c in rows[0]), None)
    ccol = next((c for c in ("caption", "text", "prompt") if c in rows[0]), None)
    if fcol is None or ccol is None:
        raise ValueError(f"captions CSV {path} needs a file column (file_name/image/file) and a caption column "
                         f"(caption/text/prompt); it has {list(rows[0])}")
    return {r[fcol]: r[ccol] for r in rows}


class FolderSource:
    """Images in a folder (sorted by name), with captions from a CSV or COCO JSON (optional for FD/KID)."""

    def __init__(self, root: str | Path, captions: str | Path | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"reference image folder {self.root} does not exist or is not a directory")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise ValueError(f"reference folder {self.root} contains no images with extensions {IMAGE_EXTS}")
        self.captions = None
        if captions is not None:
            caps = _read_captions(Path(captions).expanduser())
            missing = [p.name for p in self.files if p.name not in caps]
            if missing:
                raise ValueError(f"{len(missing)} images in {self.root} have no caption in {captions}, "
                                 f"e.g. {missing[:3]}")
            self.captions = [caps[p.name] for p in self.files]
        # identity for the cache: folder, file names, sizes and mtimes (changes when any image changes)
        h = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        self.id = f"folder({self.root.resolve()},{len(self.files)} files,{h.hexdigest()[:12]})"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, start: int, stop: int) -> tuple[torch.Tensor, list[str]]:
        from PIL import Image, UnidentifiedImageError

        imgs = []
        for p in self.files[start:stop]:
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot read reference image {p}: {e}") from None
            imgs.append(torch.from_numpy(a).permute(2, 0, 1))
        sizes = {tuple(t.shape) for t in imgs}
        if len(sizes) > 1:  # mixed sizes: bring each to the largest common square before stacking
            s = min(min(t.shape[1:]) for t in imgs)
            imgs = [resize_images(t[None], s)[0] for t in imgs]
        caps = self.captions[start:stop] if self.captions else [""] * len(imgs)
        return torch.stack(imgs), caps


def build_source(ref_cfg: dict):
    kind = ref_cfg.get("dataset", "shapes")
    if kind == "shapes":
        return ShapesSource(ref_cfg.get("seed"))
    if kind == "folder":
        if not ref_cfg.get("root"):
            raise ValueError("metrics.reference.dataset=folder needs metrics.reference.root=<image folder>")
        return FolderSource(ref_cfg["root"], ref_cfg.get("captions"))
    raise ValueError(f"unknown reference dataset {kind!r}; choose 'shapes' or 'folder'")
