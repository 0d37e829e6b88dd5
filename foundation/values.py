"""Config values as the ablation code checks them: one definition of "a plain container", "an integer" and "a finite
number", shared by surgery, the training plan and the preflight (YAML's `true` is a bool, never a number here)."""

from __future__ import annotations

import math

from omegaconf import OmegaConf


def plain(node):
    """An OmegaConf node as plain Python containers (resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if hasattr(node, "_metadata") else node


def is_int(v) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite_number(v) -> bool:
    """A real, finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
