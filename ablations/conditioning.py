"""Frozen text conditioning for the job's training and denoising loss: `foundation.conditioning` (the pipeline's own
`encode_prompt`, SDXL's pooled embeddings and time ids included) at the job's resolution, in float32."""

from __future__ import annotations

import torch

from foundation.conditioning import encode


class PromptEncoder:
    """`PromptEncoder(pipe, resolution)(captions) -> (states, added_cond_kwargs or None)`, float32."""

    def __init__(self, pipe, resolution: int):
        self.pipe, self.resolution = pipe, int(resolution)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, dict | None]:
        states, added = encode(self.pipe, captions, self.resolution, self.resolution)
        return states.float(), ({k: v.float() for k, v in added.items()} if added else None)
