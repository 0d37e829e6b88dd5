"""Fail before any compute: the model resolves and every variant of the sweep is valid on its UNet.

Runtime failures of one variant (NaNs, out-of-memory, a crash in training) are recorded per job and the
sweep goes on; but a missing checkpoint or a misspelt component name would fail *every* job the same way,
so they stop the command at once with one clear message (exit code 2) and nothing is computed.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf


def specs(cfg: DictConfig) -> dict[str, dict]:
    """Every ablation spec the command can run: the sweep's variants, else the `ablation` group node."""
    variants = OmegaConf.to_container(cfg.get("variants") or {}, resolve=True)
    if variants:
        return {str(k): dict(v) for k, v in variants.items()}
    return {str(cfg.get("variant", "ablation")): dict(OmegaConf.to_container(cfg.ablation, resolve=True))}


def check(cfg: DictConfig) -> None:
    """Raise ModelNotFoundError / ValueError naming the problem; loads the (cached) model, computes nothing."""
    from . import surgery
    from .loading import load_pipeline

    m = cfg.model
    pipe = load_pipeline(m.path, device=m.device, dtype=m.dtype, download=bool(m.get("download", False)))
    scratch = cfg.protocol.name == "scratch"
    for name, spec in specs(cfg).items():
        try:
            surgery.validate(pipe.unet, spec, from_scratch=scratch)
        except (ValueError, KeyError, IndexError) as e:
            raise ValueError(f"variant {name!r}: {e}") from e


def check_or_exit(cfg: DictConfig) -> None:
    from .loading import ModelNotFoundError

    try:
        check(cfg)
    except (ModelNotFoundError, ValueError) as e:
        print(f"error: {e}\nNothing was computed.", file=sys.stderr)
        raise SystemExit(2) from None
