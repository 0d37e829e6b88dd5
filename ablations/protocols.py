"""The three protocols under which a variant is measured, all with the same budget and seeds.

- `inference`: surgery on the trained weights, no training. Answers "how much does the trained model depend on
  this component?"; for swapped norms it mostly measures the broken statistics.
- `finetune`: surgery, then `steps` training steps. The baseline (op `none`) gets the same steps, so the
  comparison is not "finetuned variant vs untouched base".
- `scratch`: the variant's architecture, freshly initialised with the job seed, trained for `steps` steps.

The number of steps, batch size, learning rate, data and seed come from the protocol/budget config and never
from the variant: `training_plan` is the single place they are decided, so budgets are equal by construction.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from foundation.values import is_finite_number, is_int
from tiny_sd.training import TrainConfig, train_unet

from . import surgery

PROTOCOLS = ("inference", "finetune", "scratch")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


class PlanError(ValueError):
    """A protocol value training cannot use; `key` names the protocol field (its value usually comes from
    `budget`, which is what a user overrides: the preflight names that source)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def training_plan(protocol: dict, seed: int) -> dict:
    """The training arguments of a job: a pure function of the protocol config and the seed.

    Every value is checked here, because a bad one (batch_size 0, ckpt_every 0, lr nan) would otherwise fail or
    train silently wrong only inside the training loop, once per job."""
    name = protocol["name"]
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    plan = {"steps": 0 if name == "inference" else protocol.get("steps"), "batch_size": protocol.get("batch_size", 64),
            "lr": protocol.get("lr", 3e-4), "seed": int(seed), "ema_decay": protocol.get("ema_decay"),
            "ckpt_every": protocol.get("ckpt_every", 50), "warmup": protocol.get("warmup", 0),
            "precision": protocol.get("precision", "float32"),
            "gradient_checkpointing": bool(protocol.get("gradient_checkpointing", False)),
            "min_snr_gamma": protocol.get("min_snr_gamma", 5.0)}
    if name != "inference" and not (is_int(plan["steps"]) and plan["steps"] >= 1):
        raise PlanError("steps", f"protocol {name!r} needs steps >= 1 (an integer), got {plan['steps']!r}")
    for key, lo in (("batch_size", 1), ("ckpt_every", 1), ("warmup", 0)):
        if not (is_int(plan[key]) and plan[key] >= lo):
            raise PlanError(key, f"protocol {name!r}: {key} must be an integer >= {lo}, got {plan[key]!r}")
    if not (is_finite_number(plan["lr"]) and plan["lr"] > 0):
        raise PlanError("lr", f"protocol {name!r}: lr must be a finite number > 0, got {plan['lr']!r}")
    ema = plan["ema_decay"]
    if ema is not None and not (is_finite_number(ema) and 0 <= ema < 1):
        raise PlanError("ema_decay", f"protocol {name!r}: ema_decay must be null or in [0, 1), got {ema!r}")
    if plan["precision"] not in PRECISIONS:
        raise PlanError("precision", f"protocol {name!r}: precision must be one of {', '.join(PRECISIONS)}, "
                                     f"got {plan['precision']!r}")
    g = plan["min_snr_gamma"]
    if g is not None and not (is_finite_number(g) and g > 0):
        raise PlanError("min_snr_gamma", f"protocol {name!r}: min_snr_gamma must be null or a number > 0, got {g!r}")
    plan["lr"] = float(plan["lr"])
    return plan


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bfloat16 autocast on a GPU that supports it, else float16 on a GPU, float32 on the CPU (where
    autocast is slower than float32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def fresh_like(unet: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A randomly initialised UNet of `unet`'s config (diffusers' default init), seeded for reproducibility."""
    torch.manual_seed(seed)
    p = next(unet.parameters())
    return type(unet).from_config(dict(unet.config)).to(device=p.device, dtype=p.dtype)


def build_variant(base: torch.nn.Module, spec: dict, protocol: str, seed: int) -> torch.nn.Module:
    """The UNet a job starts training/sampling from (a new module; `base` is not modified)."""
    if protocol == "scratch":
        torch.manual_seed(seed)  # surgery that builds modules (depth, blocks) draws its init from here too
        return surgery.apply(fresh_like(base, seed), spec, from_scratch=True)
    return surgery.apply(base, spec)


def train_config(plan: dict, device: torch.device) -> TrainConfig:
    """The plan's recipe for `train_unet` (the one place plan keys become training settings), with its
    precision resolved for `device`; caption dropout, the learning-rate floor and the text encoder's rate keep
    `TrainConfig`'s defaults."""
    return TrainConfig(steps=plan["steps"], batch_size=plan["batch_size"], lr=plan["lr"], seed=plan["seed"],
                       ckpt_every=plan["ckpt_every"], ema_decay=plan["ema_decay"], warmup=plan["warmup"],
                       min_snr_gamma=plan.get("min_snr_gamma", 5.0),
                       precision=resolve_precision(plan.get("precision", "float32"), device))


def train(unet: torch.nn.Module, text_encoder, data, plan: dict, ckpt_dir: str | Path | None,
          scheduler_config: dict | None = None, progress: bool = True, encode=None) -> dict:
    """Train `unet` in place with float32 master weights with tiny_sd's loop (checkpoint/resume in `ckpt_dir`),
    under the plan's autocast precision, Min-SNR gamma and gradient checkpointing; `encode` conditions from the
    captions with the pipeline's frozen encoders (`ablations.conditioning.PromptEncoder`)."""
    if plan["steps"] == 0:
        return {"steps": 0, "loss": [], "seconds": 0.0}
    dtype = next(unet.parameters()).dtype
    unet.float()  # never train in half precision; cast back for sampling below
    # The text encoder may be shared with load_pipeline's cache: copy before casting, never cast in place.
    te = text_encoder if encode is not None or text_encoder.dtype == torch.float32 else copy.deepcopy(text_encoder).float()
    checkpointing = plan.get("gradient_checkpointing") and hasattr(unet, "enable_gradient_checkpointing")
    if checkpointing:
        unet.enable_gradient_checkpointing()  # recompute activations in backward: memory for time (Chen et al. 2016)
    try:
        out = train_unet(unet, te, data, train_config(plan, next(unet.parameters()).device), ckpt_dir=ckpt_dir,
                         scheduler_config=dict(scheduler_config) if scheduler_config else None, encode=encode,
                         progress=progress)
    finally:
        if checkpointing:
            unet.disable_gradient_checkpointing()
    # torch's own Module.to: diffusers' override warns about fp32-kept modules on every dtype cast, even when
    # the UNet has none ("should be kept in float32: []")
    torch.nn.Module.to(unet, dtype)
    return out
