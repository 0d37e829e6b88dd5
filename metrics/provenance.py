"""Hashes and version stamps that go into every result's provenance."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from foundation import io


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so large weight files are hashed once per process."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def versions() -> dict[str, str]:
    return io.versions(("torch", "torchmetrics", "torch-fidelity", "transformers", "diffusers", "scipy", "numpy"))
