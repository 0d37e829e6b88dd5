"""What the report records about where numbers came from: package versions, device, git revision.

Package versions are read from installed metadata (``importlib.metadata``) rather than by importing the packages,
so building a report never pays for importing torch. Devices are whatever the jobs recorded in their provenance
(the report may be rebuilt on another machine than the one that ran the jobs), plus the machine building the report.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

from foundation import io

PACKAGES = ("unet-lab", "torch", "diffusers", "transformers", "torchmetrics", "numpy", "scipy", "pandas",
            "matplotlib", "hydra-core", "captum")
# Keys a job may use in its provenance for the device and the code revision.
DEVICE_KEYS = ("device", "gpu", "accelerator")
GIT_KEYS = ("git", "git_revision", "git_rev", "commit")


def package_versions(packages: Iterable[str] = PACKAGES) -> list[tuple[str, str]]:
    return [("python", io.python_version()), *io.versions(tuple(packages)).items()]


def git_revision(path: str | Path) -> str:
    """``<sha>`` (plus ``-dirty`` with uncommitted changes) of the repository containing ``path``."""
    return io.git_revision(path, dirty=True) or "not a git checkout"


def _recorded(records: Iterable[dict], keys: Iterable[str]) -> list[str]:
    vals = []
    for rec in records:
        prov = rec.get("provenance") or {}
        for k in keys:
            if prov.get(k) not in (None, ""):
                vals.append(str(prov[k]))
    return list(dict.fromkeys(vals))


def environment(records: list[dict], code_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(name, value) rows for the report's environment table."""
    code_dir = code_dir or Path(__file__).resolve().parent
    rows = [("git revision (report code)", git_revision(code_dir))]
    recorded_git = _recorded(records, GIT_KEYS)
    rows.append(("git revision (recorded by jobs)", ", ".join(recorded_git) or "not recorded by the jobs"))
    rows.append(("device (recorded by jobs)", ", ".join(_recorded(records, DEVICE_KEYS)) or "not recorded by the jobs"))
    rows.append(("report built on", f"{platform.platform()} ({platform.machine()}, {platform.node()})"))
    rows.extend(package_versions())
    return rows
