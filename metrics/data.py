"""Image–caption sources: the embedded shapes world, an image folder with captions (CSV / COCO JSON), or a local
Hugging Face `datasets` dataset; and the deterministic train / held-out split every part of a job uses.

A source has an `id` (its identity in cache keys), a length, `captions_of(i)` (all captions of image i; COCO has
about five) and `load(start, stop, resolution=None, resize="bicubic-antialias")`: float images (N,3,H,W) in [0,1]
with their first captions. With `resolution`, every image is centre-cropped to a square and resized to it on its
own, from its original pixels (so images of mixed sizes stack, and reference images get the one resize that
generated images get). The same sources feed training latents, the held-out denoising loss, the sampled
prompts and the metrics' reference statistics (`ablations/data.py` builds them from the `data` config group).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tiny_sd import shapes

from .images import resize_images

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Images read from disk per source id in this process: tests prove where a job's images came from with it.
IMAGES_READ: Counter = Counter()


def _stack(imgs: list[torch.Tensor], resolution: int | None, resize: str = "bicubic-antialias") -> torch.Tensor:
    """One batch from per-image tensors: each brought to `resolution` on its own (centre crop + `resize`) or,
    unset, to the smallest common square when sizes differ."""
    if resolution is not None:
        return torch.cat([resize_images(t[None], int(resolution), resize) for t in imgs])
    if len({tuple(t.shape) for t in imgs}) > 1:
        s = min(min(t.shape[1:]) for t in imgs)
        imgs = [resize_images(t[None], s)[0] for t in imgs]
    return torch.stack(imgs)


class ShapesSource:
    """Real shapes-world images of one split (default: held-out, `shapes.HELDOUT_SEED`); unbounded length."""

    def __init__(self, seed: int | None = None):
        self.seed = shapes.HELDOUT_SEED if seed is None else int(seed)
        self.id = f"shapes(seed={self.seed})"
        self.native_resolution = shapes.IMAGE_SIZE

    def __len__(self) -> int:
        return 2**31 - 1

    def captions_of(self, i: int) -> list[str]:
        return [shapes.sample(self.seed, int(i)).caption]

    def load(self, start: int, stop: int, resolution: int | None = None,
             resize: str = "bicubic-antialias") -> tuple[torch.Tensor, list[str]]:
        imgs, caps, _ = shapes.batch(self.seed, range(start, stop))
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        return (x if resolution in (None, x.shape[-1]) else _stack(list(x), resolution, resize)), caps


def read_captions(path: Path) -> dict[str, list[str]]:
    """{file name: [captions]}; CSV with columns (file_name|image|file, caption|text) -- a file may have several
    rows -- or a COCO captions JSON (about five captions per image, kept in annotation order)."""
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or "images" not in d or "annotations" not in d:
            raise ValueError(f"{path} is not a COCO captions JSON (needs 'images' and 'annotations' lists)")
        names = {im["id"]: im["file_name"] for im in d["images"]}
        for a in d["annotations"]:
            if a["image_id"] in names:
                out.setdefault(names[a["image_id"]], []).append(a["caption"].strip())
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
    for r in rows:
        out.setdefault(r[fcol], []).append(r[ccol].strip())
    return out


class FolderSource:
    """Images in a folder (sorted by name), with captions from a CSV or COCO JSON (optional for FD/KID)."""

    def __init__(self, root: str | Path, captions: str | Path | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a directory")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise ValueError(f"image folder {self.root} contains no images with extensions {IMAGE_EXTS}")
        self.all_captions: list[list[str]] | None = None
        self.captions: list[str] | None = None  # the first caption of each image
        h = hashlib.sha256()
        if captions is not None:
            caps = read_captions(Path(captions).expanduser())
            missing = [p.name for p in self.files if p.name not in caps]
            if missing:
                raise ValueError(f"{len(missing)} images in {self.root} have no caption in {captions}, "
                                 f"e.g. {missing[:3]}")
            self.all_captions = [caps[p.name] for p in self.files]
            self.captions = [c[0] for c in self.all_captions]
            h.update(json.dumps(self.all_captions).encode())
        # identity for the caches: folder, file names, sizes and mtimes, captions (changes when any of them does)
        for p in self.files:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        self.id = f"folder({self.root.resolve()},{len(self.files)} files,{h.hexdigest()[:12]})"

    def keys(self) -> list[str]:
        return [p.name for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def captions_of(self, i: int) -> list[str]:
        return list(self.all_captions[i]) if self.all_captions else [""]

    def load(self, start: int, stop: int, resolution: int | None = None,
             resize: str = "bicubic-antialias") -> tuple[torch.Tensor, list[str]]:
        from PIL import Image, UnidentifiedImageError

        imgs = []
        for p in self.files[start:stop]:
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot read image {p}: {e}") from None
            imgs.append(torch.from_numpy(a).permute(2, 0, 1))
        IMAGES_READ[self.id] += len(imgs)
        caps = self.captions[start:stop] if self.captions else [""] * len(imgs)
        return _stack(imgs, resolution, resize), caps


class HFSource:
    """A local Hugging Face `datasets` dataset: a `save_to_disk` folder, or an `imagefolder` (images plus a
    metadata.csv/jsonl with `file_name` and the text column). Rows of `split`; a text column holding lists
    gives several captions per image."""

    def __init__(self, path: str | Path, image_column: str = "image", text_column: str = "text",
                 split: str | None = None):
        try:
            import datasets
        except ModuleNotFoundError:
            raise ModuleNotFoundError("data=hf needs the `datasets` package: pip install datasets") from None
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"dataset folder {p} does not exist or is not a directory")
        saved = any((p / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))
        with _quiet_datasets():
            ds = datasets.load_from_disk(str(p)) if saved else datasets.load_dataset("imagefolder", data_dir=str(p))
        if isinstance(ds, datasets.DatasetDict):
            names = list(ds)
            split = split or ("train" if "train" in ds else names[0])
            if split not in ds:
                raise ValueError(f"dataset {p} has splits {names}, not data.split={split!r}")
            ds = ds[split]
        for col, key in ((image_column, "data.image_column"), (text_column, "data.text_column")):
            if col not in ds.column_names:
                raise ValueError(f"dataset {p} has no column {col!r} ({key}); its columns: {ds.column_names}")
        self.ds, self.image_column, self.text_column = ds, image_column, text_column
        self._texts = [t if isinstance(t, list) else [t] for t in ds[text_column]]
        self.id = f"hf({p.resolve()},{split},{len(ds)} rows,{getattr(ds, '_fingerprint', '')[:12]})"

    def keys(self) -> list[str]:
        return [str(i) for i in range(len(self.ds))]

    def __len__(self) -> int:
        return len(self.ds)

    def captions_of(self, i: int) -> list[str]:
        return [str(t).strip() for t in self._texts[i]]

    def load(self, start: int, stop: int, resolution: int | None = None,
             resize: str = "bicubic-antialias") -> tuple[torch.Tensor, list[str]]:
        rows = self.ds[start:stop][self.image_column]
        imgs = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                for im in rows]
        IMAGES_READ[self.id] += len(imgs)
        return _stack(imgs, resolution, resize), [self.captions_of(i)[0] for i in range(start, stop)]


class _quiet_datasets:
    """`datasets` prints progress bars and info logs on every load: silence them (quiet default runs)."""

    def __enter__(self):
        import datasets

        self._was = datasets.utils.logging.get_verbosity()
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        datasets.utils.logging.set_verbosity(self._was)


class Subset:
    """Rows `indices` of `source` (in that order) under the name `part`, with the source's interface."""

    def __init__(self, source, indices, part: str):
        self.source, self.indices, self.part = source, np.asarray(indices, dtype=np.int64), part
        digest = hashlib.sha256(self.indices.tobytes()).hexdigest()[:12]
        self.id = f"{source.id}[{part}: {len(self.indices)} rows {digest}]"

    def __len__(self) -> int:
        return len(self.indices)

    def captions_of(self, i: int) -> list[str]:
        return self.source.captions_of(int(self.indices[i]))

    def load(self, start: int, stop: int, resolution: int | None = None,
             resize: str = "bicubic-antialias") -> tuple[torch.Tensor, list[str]]:
        rows = self.indices[start:stop]
        if len(rows) and (np.diff(rows) == 1).all():  # contiguous rows: one read
            return self.source.load(int(rows[0]), int(rows[-1]) + 1, resolution, resize)
        imgs, caps = [], []
        for j in rows:  # one row at a time: the rows of a split are not contiguous
            x, c = self.source.load(int(j), int(j) + 1, resolution, resize)
            imgs.append(x[0])
            caps += c
        return _stack(imgs, resolution, resize), caps


def split_heldout(source, heldout: float | int) -> tuple[Subset, Subset]:
    """(train, held-out) parts of a finite source, deterministic and stable when files are added: rows are ranked
    by the sha256 of their key (file name or row number); the first k of that ranking are held out, k = heldout
    if it is a count (>= 1) or round(heldout * N) if it is a fraction. Held-out rows stay in ranking order (so the
    first n of them are a random-like sample), training rows in source order."""
    keys = source.keys()
    n = len(keys)
    k = int(heldout) if heldout >= 1 else int(round(float(heldout) * n))
    if not 1 <= k < n:
        raise ValueError(f"data.heldout={heldout} holds out {k} of {n} images; it must leave at least one image "
                         f"on each side (a fraction in (0, 1) or a count < {n})")
    rank = sorted(range(n), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest())
    held = rank[:k]
    train = sorted(rank[k:])
    return Subset(source, train, "train"), Subset(source, held, "heldout")


def build_source(ref_cfg: dict):
    """The metrics' reference source from `metrics.reference` (dataset shapes | folder; `data` is the job's data,
    which the job passes in, and outside a job the default data, shapes)."""
    kind = ref_cfg.get("dataset", "shapes")
    if kind in ("shapes", "data"):
        return ShapesSource(ref_cfg.get("seed"))
    if kind == "folder":
        if not ref_cfg.get("root"):
            raise ValueError("metrics.reference.dataset=folder needs metrics.reference.root=<image folder>")
        return FolderSource(ref_cfg["root"], ref_cfg.get("captions"))
    raise ValueError(f"unknown reference dataset {kind!r}; choose 'data', 'shapes' or 'folder'")
