"""Component surgery, training protocols and Hydra sweeps over Stable Diffusion UNets."""

from .checkpoints import CheckpointMismatchError
from .loading import ModelNotFoundError, check_prompts, load_pipeline

__all__ = ["load_pipeline", "check_prompts", "ModelNotFoundError", "CheckpointMismatchError"]
