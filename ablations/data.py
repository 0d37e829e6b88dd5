"""A job's data, from the `data` config group: what it trains on, the held-out set of the denoising loss, the
prompts it samples and the metrics' reference images all come from here (configs/data/*.yaml).

- `data=shapes`: tiny_sd's procedural world (train split `shapes.TRAIN_SEED`, held-out split `HELDOUT_SEED`);
- `data=folder data.root=DIR data.captions=FILE`: images + a CSV (`file_name,caption`) or a COCO captions JSON;
- `data=hf data.path=DIR`: a local Hugging Face dataset (`save_to_disk` folder or `imagefolder` with metadata).

A folder or dataset is split into train / held-out deterministically (`metrics.data.split_heldout`). Images are
centre-cropped and resized to `data.resolution`, by default the model's native resolution (UNet sample size times
the VAE factor: 512 for SD 1.5, 768 for SD 2.1-v, 1024 for SDXL). `prompts.file` replaces the held-out captions as
the prompts a job samples (e.g. the COCO-30K caption list). `check` refuses, before any compute, a model that
does not generate at the shapes world's 64 px with `data=shapes`, unless `data.allow_any_model=true`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from foundation.pipeline import native_resolution
from foundation.values import plain
from metrics.data import FolderSource, HFSource, ShapesSource, Subset, split_heldout
from tiny_sd import shapes

KINDS = ("shapes", "folder", "hf")
SHAPES_RESOLUTION = 64


@dataclass
class JobData:
    name: str
    train: object          # an image–caption source (metrics.data)
    heldout: object
    resolution: int
    all_captions: bool     # one training row per caption (COCO's ~5 per image), else the first caption


def first(source, n: int):
    """The first min(n, len(source)) rows of a source (a budget's cap on training or held-out images)."""
    k = min(int(n), len(source))
    return Subset(source, range(k), f"first {k}")


def resolution_of(cfg, pipe) -> int:
    r = cfg.data.get("resolution")
    return native_resolution(pipe) if r is None else int(r)


def build(cfg, pipe) -> JobData:
    """The sources of `cfg.data` (no image is read here)."""
    d = plain(cfg.data)
    kind = d.get("kind", "shapes")
    if kind == "shapes":
        train, held = ShapesSource(shapes.TRAIN_SEED), ShapesSource(shapes.HELDOUT_SEED)
    elif kind == "folder":
        train, held = split_heldout(FolderSource(d["root"], d.get("captions")), d.get("heldout", 0.1))
    elif kind == "hf":
        src = HFSource(d["path"], d.get("image_column", "image"), d.get("text_column", "text"), d.get("split"))
        train, held = split_heldout(src, d.get("heldout", 0.1))
    else:
        raise ValueError(f"unknown data.kind {kind!r}; valid: {', '.join(KINDS)}")
    return JobData(str(d.get("name", kind)), train, held, resolution_of(cfg, pipe), bool(d.get("all_captions", True)))


def read_prompts(path: str | Path, column: str | None = None) -> list[str]:
    """Prompts of a file: one a line (.txt), a CSV with a caption column, a JSON list of strings, a JSON list of
    records with a caption column, or a COCO captions JSON (every caption, in annotation order)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompts.file {p} does not exist")
    cols = [column] if column else ["caption", "prompt", "text", "Prompt"]
    if p.suffix.lower() == ".csv":
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
        col = next((c for c in cols if rows and c in rows[0]), None)
        if col is None:
            raise ValueError(f"prompts.file {p}: no column {' / '.join(cols)} (columns: {list(rows[0]) if rows else []});"
                             f" name it with prompts.column")
        out = [r[col] for r in rows]
    elif p.suffix.lower() == ".json":
        d = json.loads(p.read_text())
        if isinstance(d, dict) and "annotations" in d:
            out = [a["caption"] for a in d["annotations"]]
        elif isinstance(d, list) and all(isinstance(x, str) for x in d):
            out = d
        elif isinstance(d, list) and all(isinstance(x, dict) for x in d):
            col = next((c for c in cols if d and c in d[0]), None)
            if col is None:
                raise ValueError(f"prompts.file {p}: records have no key {' / '.join(cols)}; name it with prompts.column")
            out = [x[col] for x in d]
        else:
            raise ValueError(f"prompts.file {p}: expected a list of strings, a list of records or a COCO captions JSON")
    else:
        out = p.read_text().splitlines()
    out = [s.strip() for s in out if s and s.strip()]
    if not out:
        raise ValueError(f"prompts.file {p} holds no prompts")
    return out


def prompts(cfg, data: JobData, n: int) -> tuple[list[str], dict]:
    """The n prompts a job samples and where they came from: the first n lines of `prompts.file`, else the first
    caption of the first n held-out images."""
    pc = plain(cfg.get("prompts")) or {}
    if pc.get("file"):
        allp = read_prompts(pc["file"], pc.get("column"))
        if len(allp) < n:
            raise ValueError(f"prompts.file {pc['file']} has {len(allp)} prompts but budget.n_images={n}; lower "
                             f"budget.n_images or give more prompts")
        digest = hashlib.sha256("\n".join(allp).encode()).hexdigest()[:12]
        return allp[:n], {"source": str(Path(pc["file"]).expanduser().resolve()), "sha256": digest,
                          "n_in_file": len(allp), "n": n, "rule": f"first {n} prompts of the file"}
    if len(data.heldout) < n:
        raise ValueError(f"data {data.name!r} has {len(data.heldout)} held-out images but budget.n_images={n}: "
                         f"raise data.heldout, lower budget.n_images, or give prompts.file=FILE")
    return [data.heldout.captions_of(i)[0] for i in range(n)], {
        "source": data.heldout.id, "n": n, "rule": f"first caption of held-out images 0..{n - 1}"}


def check(cfg, pipe) -> JobData:
    """The job's data, built once; ValueError naming what to provide when it cannot serve this model and budget
    (no image read)."""
    d = plain(cfg.data)
    kind = d.get("kind", "shapes")
    if kind not in KINDS:
        raise ValueError(f"unknown data.kind {kind!r}; valid: {', '.join(KINDS)}")
    for key, need in (("folder", ("root",)), ("hf", ("path",))):
        if kind == key:
            missing = [k for k in need if not d.get(k)]
            if missing:
                raise ValueError(f"data={kind} needs data.{missing[0]}=DIR" +
                                 (" (and data.captions=CSV_OR_COCO_JSON)" if kind == "folder" else ""))
    if kind == "folder" and not d.get("captions"):
        raise ValueError("data=folder needs data.captions=FILE: a CSV (file_name,caption) or a COCO captions JSON "
                         "(training and the sampled prompts need a caption per image)")
    native = native_resolution(pipe)
    r = resolution_of(cfg, pipe)
    if kind == "shapes" and native != SHAPES_RESOLUTION and not d.get("allow_any_model"):
        raise ValueError(
            f"model {cfg.model.path} generates {native}-px images but data=shapes is tiny_sd's 64-px shapes world: "
            f"training, the denoising loss, the prompts and the reference images would all be shapes, and every "
            f"number meaningless for this model. Give your data: data=folder data.root=DIR data.captions=FILE "
            f"(or data=hf data.path=DIR), or set data.allow_any_model=true to run on shapes anyway (recorded)")
    step = int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if r < step or r % step:
        raise ValueError(f"data.resolution={r} must be a positive multiple of {step} for this model (VAE factor "
                         f"{pipe.vae_scale_factor} times the UNet's {len(pipe.unet.config.block_out_channels) - 1} "
                         f"downsamplings)")
    data = build(cfg, pipe)
    prompts(cfg, data, int(cfg.budget.n_images))  # the prompts exist in the number asked for
    return data


def describe(data: JobData, train_id: str | None, n_train: int, n_val: int) -> dict:
    """The data part of a job's provenance (`train_id`: the rows trained on, None without training)."""
    return {"name": data.name, "train": train_id, "train_images": n_train, "heldout": data.heldout.id,
            "heldout_images_for_loss": n_val, "resolution": data.resolution,
            "preprocess": f"centre crop to square, bicubic antialiased resize to {data.resolution} px, VAE "
                          f"posterior mean x scaling factor (latents cached per source, resolution and VAE)",
            "train_rows": "every caption of each image" if data.all_captions else "first caption of each image"}
