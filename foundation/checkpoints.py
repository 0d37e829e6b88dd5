"""Checkpoint layout and load verification: what a pipeline folder's weight files hold, in the layout real SD
checkpoints use, and proof that a loaded pipeline's modules hold exactly those tensors.

Why: transformers 5 dropped the `text_model.` level of `CLIPTextModel` and saves flat keys (`embeddings.*`,
`encoder.*`); transformers 4 loads such a file with a warning and leaves every weight at its random initialisation.
So we write every text encoder in the layout of every SD 1.x/2.x/SDXL text encoder (`text_model.*`), which both
major versions load, and after each load we compare every parameter with its file, bit for bit (after the dtype
cast the loader itself applies): a component that loaded with missing, unexpected or re-initialised tensors is
an error naming the component, the keys and the installed library versions, never a warning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# The prefix real SD text encoders carry; transformers 5 strips it on load (a PrefixChange in its conversion mapping)
# and transformers 4 keeps `text_model` as a submodule, so both read this layout.
TEXT_PREFIX = "text_model."
# diffusers' renames of pre-0.14 VAE attention weights (ModelMixin._convert_deprecated_attention_blocks)
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


class CheckpointMismatchError(ValueError):
    """A component's loaded tensors are not its files' tensors (missing, unexpected or left at initialisation)."""


def library_versions() -> str:
    import diffusers
    import transformers

    return f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, torch {torch.__version__}"


def canonical_key(module: torch.nn.Module, key: str) -> str:
    """`key` of `module`'s state dict in the layout real SD checkpoints use (a CLIP text model's keys under
    `text_model.`); every other component's keys are already canonical."""
    if _is_clip_text(module) and not key.startswith(TEXT_PREFIX):
        return TEXT_PREFIX + key
    return key


def _is_clip_text(module) -> bool:
    return type(module).__name__ == "CLIPTextModel"


# ---------------------------------------------------------------------------------------------- weight files
def weight_files(folder: Path) -> list[Path]:
    """The weight files a loader reads for the component in `folder`: a sharded index's shards, else the one
    non-variant safetensors (or .bin) file; [] when there is none."""
    folder = Path(folder)
    for stem in _WEIGHT_NAMES:
        for ext in ("safetensors", "bin"):
            index = folder / f"{stem}.{ext}.index.json"
            if index.exists():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return [folder / s for s in shards]
            if (folder / f"{stem}.{ext}").exists():
                return [folder / f"{stem}.{ext}"]
    return []


def _read(path: Path):
    """(key -> tensor getter) for one weight file, without reading tensors until asked (safetensors mmap)."""
    if path.suffix == ".safetensors":
        handle = safe_open(str(path), framework="pt")
        return {k: (lambda k=k: handle.get_tensor(k)) for k in handle.keys()}
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: (lambda v=v: v) for k, v in sd.items()}


def header_keys(path: Path) -> list[str]:
    """Tensor names in a safetensors file's header (no tensor is read)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return [k for k in header if k != "__metadata__"]


# ---------------------------------------------------------------------------------------------- verification
def _candidates(key: str):
    """Module keys a file key may load into: itself, with/without the text-model prefix, legacy VAE names."""
    yield key
    yield key[len(TEXT_PREFIX):] if key.startswith(TEXT_PREFIX) else TEXT_PREFIX + key
    legacy = re.sub(r"\.(query|key|value|proj_attn)\.", lambda m: f".{_LEGACY_ATTENTION[m.group(1)]}.", key)
    if legacy != key:
        yield legacy


def _ignored(module, key: str, buffers: set[str]) -> bool:
    """File keys a loader drops on purpose: non-persistent buffers saved by older versions (position_ids) and the
    class's own ignore patterns."""
    if any(c in buffers for c in _candidates(key)):
        return True
    return any(re.search(p, key) for p in (getattr(module, "_keys_to_ignore_on_load_unexpected", None) or []))


def compare(module: torch.nn.Module, files: list[Path]) -> dict:
    """Match `module`'s state dict against `files`: {'n': tensors checked, 'missing': module keys with no file
    tensor, 'unexpected': file keys with no module tensor, 'differ': keys whose values are not the file's}."""
    state = module.state_dict()
    persistent = set(state)
    buffers = {n for n, _ in module.named_buffers()} - persistent
    getters: dict[str, object] = {}
    for f in files:
        getters.update(_read(f))
    matched: dict[str, str] = {}  # module key -> file key
    unexpected = []
    for fk in getters:
        mk = next((c for c in _candidates(fk) if c in persistent), None)
        if mk is not None:
            matched[mk] = fk
        elif not _ignored(module, fk, buffers):
            unexpected.append(fk)
    # tied tensors appear under several names in a state dict but once in a file
    loaded_ptrs = {state[mk].data_ptr() for mk in matched}
    missing = [k for k in state if k not in matched and state[k].data_ptr() not in loaded_ptrs]
    differ = []
    for mk, fk in matched.items():
        have, want = state[mk], getters[fk]()
        if want.numel() != have.numel() or not torch.equal(want.reshape(have.shape).to(have.dtype), have.cpu()):
            differ.append(mk)
    return dict(n=len(matched), missing=missing, unexpected=unexpected, differ=differ)


def _few(keys: list[str], k: int = 4) -> str:
    return ", ".join(keys[:k]) + (f" (+{len(keys) - k} more)" if len(keys) > k else "")


def verify_pipeline(pipe, folder: str | Path, label: str | None = None) -> dict[str, int]:
    """Check every weight-bearing component of `pipe` against `folder/<component>/`'s files, before the pipeline
    moves to a device. Returns {component: tensors checked}; raises CheckpointMismatchError on the first component
    that is not exactly its files."""
    folder = Path(folder)
    label = label or str(folder)
    checked = {}
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module) or not any(True for _ in module.state_dict()):
            continue
        files = weight_files(folder / name)
        if not files:
            raise CheckpointMismatchError(f"{label}: component {name!r} ({type(module).__name__}) has no weight file "
                                          f"in {folder / name} ({library_versions()})")
        r = compare(module, files)
        problems = []
        if r["missing"]:
            problems.append(f"{len(r['missing'])} missing from its files ({_few(r['missing'])})")
        if r["unexpected"]:
            problems.append(f"{len(r['unexpected'])} unexpected file keys not loaded ({_few(r['unexpected'])})")
        if r["differ"]:
            problems.append(f"{len(r['differ'])} of {r['n']} tensors differ from the file, i.e. were not loaded "
                            f"and kept their random initialisation ({_few(r['differ'])})")
        if problems:
            raise CheckpointMismatchError(
                f"{label}: component {name!r} ({type(module).__name__}) did not load from "
                f"{', '.join(f.name for f in files)}: {'; '.join(problems)}. Installed: {library_versions()}. "
                "Re-save the folder in the canonical layout (foundation.checkpoints.save_pipeline) or install "
                "library versions that read it.")
        checked[name] = r["n"]
    return checked


# ---------------------------------------------------------------------------------------------- saving
def canonicalise_folder(folder: str | Path, module: torch.nn.Module) -> list[Path]:
    """Rewrite the safetensors files of one saved component in the canonical key layout (in place)."""
    files = weight_files(Path(folder))
    for f in files:
        if f.suffix != ".safetensors":
            continue
        sd = load_file(str(f))
        if all(canonical_key(module, k) == k for k in sd):
            continue
        save_file({canonical_key(module, k): v for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    index = next(Path(folder).glob("*.safetensors.index.json"), None)
    if index is not None:
        data = json.loads(index.read_text())
        data["weight_map"] = {canonical_key(module, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return files


def save_pipeline(pipe, folder: str | Path) -> Path:
    """`pipe.save_pretrained(folder)` in safetensors, with every component in the layout real SD checkpoints
    use, so any transformers/diffusers in the admitted range loads it exactly."""
    folder = Path(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and _is_clip_text(module):
            canonicalise_folder(folder / name, module)
    return folder
