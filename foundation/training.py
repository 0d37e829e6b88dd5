"""One optimisation loop for the small models the project trains from scratch: AdamW (Loshchilov & Hutter 2019)
over a fixed number of steps, the batch loss a function of the step, a learning-rate schedule and optional
resumable checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import torch_save

SCHEDULES = ("warmup_cosine", "one_cycle")


def warmup_cosine(lr: float, step: int, steps: int, warmup: int = 100) -> float:
    """Learning rate of `step`: linear warm-up over `warmup` steps times a cosine decay to 0 at `steps`."""
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))


def fit(model: torch.nn.Module, steps: int, loss_at: Callable[[int], torch.Tensor], *, lr: float,
        weight_decay: float, params: Iterable[torch.nn.Parameter] | None = None, schedule: str = "warmup_cosine",
        ckpt: Path | None = None, ckpt_every: int = 250, desc: str | None = None, progress: bool = True) -> int:
    """Minimise `loss_at(step)`, the batch loss of step k, with AdamW on `params` (default: all of `model`'s) for
    `steps` steps; returns the number of steps done.

    `schedule`: "warmup_cosine" (`warmup_cosine`, peak `lr`) or "one_cycle" (torch's OneCycleLR, Smith & Topin
    2019: learning rate and Adam's beta1 annealed, peak `lr`). With `ckpt`, model, optimizer, schedule and step are
    saved atomically every `ckpt_every` steps and at the end, and a run resumes from there; when `loss_at` is a pure
    function of the step, a resumed run repeats the uninterrupted one.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    opt = torch.optim.AdamW(model.parameters() if params is None else params, lr=lr, weight_decay=weight_decay)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps) if schedule == "one_cycle" else None
    step = 0
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if one_cycle is not None:
            one_cycle.load_state_dict(state["schedule"])
        step = state["step"]
    bar = tqdm(total=steps, initial=step, desc=desc, disable=not progress)
    model.train()
    while step < steps:
        loss = loss_at(step)
        if one_cycle is None:
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(lr, step, steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if one_cycle is not None:
            one_cycle.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if ckpt is not None and (step % ckpt_every == 0 or step == steps):
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}
            if one_cycle is not None:
                state["schedule"] = one_cycle.state_dict()
            torch_save(state, ckpt)
    bar.close()
    return step
