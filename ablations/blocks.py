"""Block removal in the style of BK-SDM (Kim et al. 2023, "BK-SDM: A Lightweight, Fast, and Cheap Version of
Stable Diffusion", Sec. 3.1).

- `pairs`: remove the second ResNet+attention pair of every down stage and the second (middle) pair of every up
  stage. In diffusers terms this is `layers_per_block` 2 -> 1: down stages keep pair 0, up stages keep pairs 0
  and 2 (the last one consumes the skip of the stage's input resolution, so the kept pairs keep their shapes and
  the teacher's weights initialise the student, as BK-SDM does). BK-SDM-Base.
- `mid`: remove the mid block (`mid_block_type=None`). With `pairs`, BK-SDM-Small.

The result is a new `UNet2DConditionModel` built from the edited config, loaded from the base weights with a
strict key/shape check; the base is untouched.
"""

from __future__ import annotations

import re

from torch import nn

from .registry import Op, register

PARTS = ("pairs", "mid")
_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")


def editable_config(unet: nn.Module) -> dict:
    """`unet.config` as a dict whose edits `from_config` honours. diffusers records the keys a model's config did
    not set in `_use_default_values`, and `from_config` *drops* those keys from the dict it is given, so the class
    default comes back: SD 1.5's and SD 2.1's published config.json set neither `mid_block_type` nor
    `transformer_layers_per_block`, so `cfg["mid_block_type"] = None` still built a mid block and
    `cfg["transformer_layers_per_block"] = k` still built depth 1. Without that list every value (the defaults
    included, written out) is passed as given."""
    cfg = dict(unet.config)
    cfg.pop("_use_default_values", None)
    return cfg


def student_config(unet: nn.Module, remove: list[str]) -> dict:
    cfg = editable_config(unet)
    if "pairs" in remove:
        lpb = cfg["layers_per_block"]
        if not isinstance(lpb, int) or lpb < 2:
            raise ValueError(f"BK-SDM pair removal needs layers_per_block >= 2 (int), got {lpb!r}")
        cfg["layers_per_block"] = lpb - 1
    if "mid" in remove:
        if cfg.get("mid_block_type") is None:
            raise ValueError("the UNet has no mid block to remove")
        cfg["mid_block_type"] = None
    return cfg


def teacher_key(key: str, teacher_lpb: int, student_lpb: int) -> str:
    """The base-model key whose weights initialise the student's `key` (BK-SDM's index mapping)."""
    m = _KEY.match(key)
    if not m:
        return key
    stage, i, kind, j, rest = m.groups()
    j = int(j)
    if stage == "up_blocks" and j == student_lpb:  # the last up pair maps to the teacher's last
        j = teacher_lpb
    return f"{stage}.{i}.{kind}.{j}.{rest}"


def validate(unet: nn.Module, remove: list[str]) -> dict:
    remove = [remove] if isinstance(remove, str) else list(remove)
    if not remove or any(r not in PARTS for r in remove):
        raise ValueError(f"unknown blocks to remove {remove!r}; valid: {', '.join(PARTS)} (one or both)")
    return student_config(unet, remove)


def remove_blocks(unet: nn.Module, remove: list[str]) -> nn.Module:
    """A new UNet without the selected blocks, initialised from `unet`'s weights (BK-SDM)."""
    cfg = validate(unet, remove)
    student = type(unet).from_config(cfg)
    t_lpb, s_lpb = unet.config["layers_per_block"], cfg["layers_per_block"]
    teacher = unet.state_dict()
    mapped = {}
    for key, value in student.state_dict().items():
        src = teacher_key(key, t_lpb, s_lpb)
        if src not in teacher or teacher[src].shape != value.shape:
            raise RuntimeError(f"BK-SDM mapping: {key} <- {src} missing or shape mismatch")
        mapped[key] = teacher[src]
    student.load_state_dict(mapped, strict=True)
    p = next(unet.parameters())
    return student.to(device=p.device, dtype=p.dtype).train(unet.training)


register(Op("blocks", {"remove": list(PARTS)}, lambda unet, a, scratch: validate(unet, a["remove"]),
            lambda unet, a, scratch: remove_blocks(unet, a["remove"]), order=6))
