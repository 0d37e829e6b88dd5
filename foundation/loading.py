"""Model loading: the embedded tiny_sd, a local diffusers folder, or a hub id already in the HF cache.

Offline-first: nothing is downloaded unless asked for (`download=True`, never under
`HF_HUB_OFFLINE=1`), so a missing checkpoint gives one clear message within a second instead of a
network hang or a wall of tracebacks.

Loaded pipelines are cached per (path, device, dtype); every call returns a *new* pipeline object
over the cached modules. Surgery must therefore copy a module before changing it (it does: see
`ablations.surgery`), which keeps the cached base model intact across sweep variants.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from .checkpoints import CheckpointMismatchError, library_versions, verify_pipeline

TINY_SD_DIR = Path(__file__).resolve().parent.parent / "tiny_sd" / "weights" / "pipeline"
ALIASES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
_CACHE: dict[tuple, object] = {}


class ModelNotFoundError(FileNotFoundError):
    """Weights were not found where we looked; the message says where and how to provide them."""


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """auto: CUDA, else MPS, else CPU. An explicit device is checked here, so a typo or a missing accelerator is
    a ValueError naming the choices (the CLI's preflight turns it into exit code 2) instead of a torch error
    deep inside loading or the first job."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}; choose from {DEVICE_CHOICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here "
                             f"(torch.cuda.is_available() is False); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) "
                             f"exist: use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use cpu or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """auto: fp16 on accelerators (SD's usual inference precision), fp32 on CPU (fp16 CPU kernels are slow)."""
    if dtype is None or str(dtype) == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(names)}")
    return names[str(dtype)]


def _hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _missing_message(name: str, looked: list[str], download: bool) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hub = len(looked) > 1  # a hub id: we looked for a folder and in the HF cache
    lines = [f"Could not find the weights for model {name!r}.", "Looked in:"]
    lines += [f"  - {p}" for p in looked]
    lines.append("Provide them in one of these ways:")
    if hub:
        lines.append(f"  - on a machine with network access: `huggingface-cli download {name}` and copy the HF cache"
                     f" ({_hf_cache_dir()}) here, or set HF_HOME to where it is;")
    lines.append("  - save or copy a diffusers pipeline folder (with model_index.json) and pass its path:"
                 " load_pipeline('/path/to/folder') or `model.path=/path/to/folder` on the command line;")
    if hub:
        lines.append("  - or allow a download: load_pipeline(..., download=True) / `model.download=true`"
                     + (" (HF_HUB_OFFLINE=1 is set, so downloads are disabled)." if offline else "."))
    if download and not offline:
        lines.append("A download was attempted and failed (no network access to the hub?).")
    return "\n".join(lines)


def resolve_path(name_or_path: str, download: bool = False) -> Path | str:
    """Map a model name to a local folder (or a hub id when downloading is allowed)."""
    name = str(name_or_path)
    if name == "tiny_sd":
        if not (TINY_SD_DIR / "model_index.json").exists():
            raise ModelNotFoundError(
                f"tiny_sd weights are missing from {TINY_SD_DIR}. They ship with the package; "
                "rebuild them with `python -m tiny_sd.train` (see README, 'Rebuilding tiny_sd').")
        return TINY_SD_DIR
    name = ALIASES.get(name, name)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "model_index.json").exists():
            raise ModelNotFoundError(
                f"{p} exists but is not a diffusers pipeline folder (no model_index.json). "
                "Save one with `pipe.save_pretrained(folder)` or point to the folder that holds model_index.json.")
        return p
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local:
        raise ModelNotFoundError(_missing_message(name, [str(p.resolve())], False))
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(snapshot_download(name, local_files_only=offline or not download,
                                      allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except (OSError, ValueError) as e:  # not cached (LocalEntryNotFoundError is an OSError), or no network
        cache = _hf_cache_dir() / f"models--{name.replace('/', '--')}"
        raise ModelNotFoundError(_missing_message(name, [str(p.resolve()) + " (local path)", str(cache) + " (HF cache)"],
                                                  download)) from e


@contextlib.contextmanager
def quiet():
    """Silence diffusers' load-time chatter (safety-checker notice, progress bars, dtype renames)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def load_pipeline(name_or_path: str = "tiny_sd", device=None, dtype=None, download: bool = False):
    """Load a Stable Diffusion pipeline (SD 1.x/2.x or SDXL, chosen by the folder's model_index.json).

    Every component is verified against its weight files (`foundation.checkpoints.verify_pipeline`): missing,
    unexpected or re-initialised tensors raise CheckpointMismatchError before any compute. Returns a new pipeline object each call; modules are shared with a per-(path, device, dtype) cache.
    """
    from diffusers import DiffusionPipeline

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = resolve_path(name_or_path, download)
    key = (str(path), str(dev), str(dt))
    if key not in _CACHE:
        index = json.loads((Path(path) / "model_index.json").read_text())
        kwargs = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
        try:
            with quiet():
                pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dt, local_files_only=True, **kwargs)
        except (OSError, ValueError) as e:
            if "keys are missing" in str(e):  # diffusers 0.30 refuses missing keys itself (low_cpu_mem_usage path)
                raise CheckpointMismatchError(f"{name_or_path}: {' '.join(str(e).split())} Installed: "
                                              f"{library_versions()}.") from None
            raise ModelNotFoundError(f"{path} holds an incomplete or unreadable pipeline: {e}") from e
        # every tensor compared with its file before anything runs: a silently re-initialised component is an error
        verify_pipeline(pipe, path, label="tiny_sd" if Path(path) == TINY_SD_DIR else str(name_or_path))
        pipe.set_progress_bar_config(disable=True)
        pipe.to(dev)
        if Path(path) == TINY_SD_DIR:
            pipe.unet.config_name_tiny_sd = True  # marks the embedded world (vocabulary checks)
        _CACHE[key] = pipe
    base = _CACHE[key]
    with quiet():
        pipe = type(base)(**base.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
