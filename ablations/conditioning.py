"""Frozen text conditioning for training and the denoising loss, exactly as the pipeline conditions when it samples.

`PromptEncoder(pipe, resolution)(captions) -> (states, added_cond_kwargs)` calls the pipeline's own `encode_prompt`,
so the states the UNet is trained and scored on are the ones it sees at sampling time:
- SD 1.x / 2.x: the text encoder's last hidden state (SD 2.x's encoder already ends at OpenCLIP's penultimate
  layer); added_cond_kwargs is None;
- SDXL: the penultimate hidden states of both encoders concatenated, the pooled projection of `text_encoder_2` as
  `text_embeds`, and the micro-conditioning `time_ids` = original size + crop top-left + target size (Podell et al.
  2023, Sec. 2.2). Every training image is centre-cropped and resized to the job's resolution R, and the sampler
  calls the pipeline with its defaults (original = target = (R, R), crop (0, 0)), so both use (R, R, 0, 0, R, R).
"""

from __future__ import annotations

import torch


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or \
        getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


class PromptEncoder:
    def __init__(self, pipe, resolution: int):
        self.pipe, self.resolution, self.sdxl = pipe, int(resolution), is_sdxl(pipe)
        self.device = next(pipe.text_encoder.parameters()).device

    def time_ids(self, n: int) -> torch.Tensor:
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(n, 1)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, dict | None]:
        captions = list(captions)
        if self.sdxl:
            states, _, pooled, _ = self.pipe.encode_prompt(captions, device=self.device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
            return states.float(), {"text_embeds": pooled.float(),
                                    "time_ids": self.time_ids(len(captions)).to(states.device)}
        states, _ = self.pipe.encode_prompt(captions, self.device, 1, False)
        return states.float(), None
