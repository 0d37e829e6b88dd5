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
    v = cfg.get("variants")
    variants = OmegaConf.to_container(v, resolve=True) if v else {}  # an empty DictConfig is falsy: single runs
    if variants:
        return {str(k): dict(v) for k, v in variants.items()}
    return {str(cfg.get("variant", "ablation")): dict(OmegaConf.to_container(cfg.ablation, resolve=True))}


def check(cfg: DictConfig) -> None:
    """Raise ModelNotFoundError / ValueError naming the problem; loads the (cached) model, computes nothing."""
    from . import surgery
    from .loading import load_pipeline

    planned = planned_variants(cfg)
    defined = specs(cfg)
    unknown = [v for v in planned if v not in defined]
    if cfg.get("variants") and unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; this sweep defines: "
                         f"{', '.join(defined)}")
    m = cfg.model
    pipe = load_pipeline(m.path, device=m.device, dtype=m.dtype, download=bool(m.get("download", False)))
    scratch = cfg.protocol.name == "scratch"
    for name, spec in defined.items():
        try:
            surgery.validate(pipe.unet, spec, from_scratch=scratch)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"variant {name!r}: {e}") from e


def planned_variants(cfg: DictConfig) -> list[str]:
    """Variant names the command will run: the multirun grid (the callback's config carries the `hydra` node),
    else `cfg.variant`."""
    if "hydra" in cfg and cfg.hydra.get("sweeper") is not None:
        from .callbacks import planned_jobs

        try:
            return list(dict.fromkeys(str(j["variant"]) for j in planned_jobs(cfg)))
        except Exception:  # noqa: BLE001 - another sweeper's syntax: check the defined variants only
            pass
    return [str(cfg.get("variant"))]


def check_or_exit(cfg: DictConfig) -> None:
    from .loading import ModelNotFoundError

    try:
        check(cfg)
    except (ModelNotFoundError, ValueError) as e:
        print(f"error: {e}\nNothing was computed.", file=sys.stderr)
        raise SystemExit(2) from None
