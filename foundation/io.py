"""Files and provenance, written once: atomic writes (a reader never sees half a file, a crash never leaves one),
the git revision and the installed versions that go into every record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics", "torch-fidelity", "numpy", "scipy")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path` (unique per process, same suffix); on success it replaces `path`
    in one rename, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


def torch_save(obj, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def git_revision(path: str | Path | None = None, dirty: bool = False) -> str:
    """The commit of the checkout holding `path` (this package by default), with "-dirty" for uncommitted changes
    when asked; "" outside a git checkout."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        if dirty and subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip():
            sha += "-dirty"
        return sha
    except (OSError, subprocess.SubprocessError):
        return ""


def versions(packages=PACKAGES) -> dict[str, str]:
    """Installed versions from package metadata (no import, so no import cost)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def python_version() -> str:
    return sys.version.split()[0]
