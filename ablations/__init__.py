"""Component surgery, training protocols and Hydra sweeps over Stable Diffusion UNets."""

from foundation.checkpoints import CheckpointMismatchError
from foundation.loading import ModelNotFoundError, load_pipeline
from tiny_sd.prompts import check_prompts

__all__ = ["load_pipeline", "check_prompts", "ModelNotFoundError", "CheckpointMismatchError"]
