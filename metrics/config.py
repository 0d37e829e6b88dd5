"""Metrics configuration: defaults from `configs/metrics/default.yaml` (the Hydra group), merged with overrides."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "metrics" / "default.yaml"


def load_config(cfg=None) -> dict:
    """Plain dict of the metrics config: defaults <- `cfg` (dict or DictConfig of the `metrics` group)."""
    base = OmegaConf.load(DEFAULT_YAML)
    if cfg is not None:
        over = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        base = OmegaConf.merge(base, over)
    return OmegaConf.to_container(base, resolve=True)
