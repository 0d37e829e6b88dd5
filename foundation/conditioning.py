"""The UNet's text conditioning exactly as a diffusers pipeline computes it when it samples, written once for the
probes (which call the UNet directly) and for the job's training and denoising loss.

- SD 1.x / 2.x: the text encoder's last hidden state (SD 2.x's encoder already ends at OpenCLIP's penultimate layer);
- SDXL: the penultimate hidden states of both encoders concatenated, the pooled projection of `text_encoder_2` as
  `text_embeds`, and the micro-conditioning `time_ids` = original size + crop top-left + target size (Podell et al.
  2023, Sec. 2.2), here (H, W, 0, 0, H, W): the pipeline's default, and what centre-cropped training images give.
"""

from __future__ import annotations

import torch


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


@torch.no_grad()
def encode(pipe, prompts: list[str], height: int, width: int, device=None) -> tuple[torch.Tensor, dict | None]:
    """(encoder_hidden_states, added_cond_kwargs or None) of the conditional prompts (no CFG), in the encoders'
    dtype, through the pipeline's own `encode_prompt`."""
    device = device or next(pipe.text_encoder.parameters()).device
    if is_sdxl(pipe):
        embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=embeds.dtype)
        return embeds, {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}
    embeds, _ = pipe.encode_prompt(list(prompts), device, 1, False)
    return embeds, None
