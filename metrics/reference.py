"""Reference statistics, computed once per (dataset, range, N, resolution, resize, extractor+weights) and cached.

Cache files live in `cache_dir` (default $UNET_LAB_CACHE or ~/.cache/unet_lab/reference_stats) as
`<hash>.npz` (FeatureStats) plus `<hash>.json` (the readable key). Writes are atomic, so concurrent sweep
jobs at worst compute the same statistics twice; they never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from foundation.io import write_json

from .images import resize_images
from .stats import FeatureStats

# Number of real images pushed through an extractor by this process (tests count cache hits with it).
REAL_IMAGES_ENCODED = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNET_LAB_CACHE", "~/.cache/unet_lab")).expanduser() / "reference_stats"


def cache_key(source_id: str, start: int, n: int, resolution: int, resize: str, extractor) -> dict:
    return {"dataset": source_id, "start": start, "n": n, "resolution": resolution, "resize": resize,
            "extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
            "extractor_resize": extractor.resize, "version": 2}


def reference_stats(source, extractor, n: int, *, start: int = 0, resolution: int = 64,
                    resize: str = "bilinear-antialias", cache_dir: str | Path | None = None, batch_size: int = 256,
                    keep: str | None = "float16", progress: bool = False) -> tuple[FeatureStats, dict]:
    """FeatureStats of real images [start, start + n) of `source`, from cache when possible.

    Returns (stats, info) with info = {"key", "path", "from_cache"}.
    """
    global REAL_IMAGES_ENCODED
    if n < 2:
        raise ValueError(f"reference N must be at least 2, got {n}")
    if start + n > len(source):
        raise ValueError(f"asked for reference images [{start}, {start + n}) but {source.id} has only "
                         f"{len(source)}; lower metrics.reference.n or add images")
    key = cache_key(source.id, start, n, resolution, resize, extractor)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache / f"{digest}.npz"
    if path.is_file():
        st = FeatureStats.load(path)
        if st.n == n and (keep is None or st.keep):
            return st, {"key": key, "path": str(path), "from_cache": True}

    st = FeatureStats(extractor.dim, keep=keep)
    for i in tqdm(range(start, start + n, batch_size), desc=f"reference features {source.id}", disable=not progress):
        # each image brought to the scoring resolution on its own, from its original pixels (as generated images are)
        imgs, _ = source.load(i, min(i + batch_size, start + n), resolution, resize)
        st.update(extractor(resize_images(imgs, resolution, resize)))
        REAL_IMAGES_ENCODED += len(imgs)
    st.save(path)
    write_json(cache / f"{digest}.json", key)
    return st, {"key": key, "path": str(path), "from_cache": False}
