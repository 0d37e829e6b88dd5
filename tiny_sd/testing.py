"""Random-weight pipelines with tiny_sd's (SD 1.x) or SDXL's layout, for tests and development.

They use the real shapes-world tokenizer, so prompts tokenise exactly as with tiny_sd; only the
weights are random. `save_random_pipeline` writes a standard diffusers folder, which is how tests
exercise the local-path branch of `load_pipeline`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import arch
from . import tokenizer as tok


def _tokenizer():
    d = Path(tempfile.mkdtemp(prefix="tiny_tok_"))
    return tok.load(tok.build_files(d))


def _text_encoder(tokenizer, seed: int, with_projection: bool = False, hidden: int = arch.TEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**arch.clip_text_config(len(tokenizer), tokenizer.bos_token_id,
                                                  tokenizer.eos_token_id, hidden_size=hidden,
                                                  intermediate_size=4 * hidden))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()


def random_pipeline(seed: int = 0, **unet_overrides):
    """A `StableDiffusionPipeline` with tiny_sd's architecture and random weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = _tokenizer()
    text_encoder = _text_encoder(tokenizer, seed)
    torch.manual_seed(seed)
    unet = arch.build_unet(**unet_overrides).eval()
    vae = arch.build_vae().eval()
    vae.config.scaling_factor = 1.0
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**arch.scheduler_config()), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def random_sdxl_pipeline(seed: int = 0):
    """A `StableDiffusionXLPipeline` with SDXL's layout (two text encoders, added conditions)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _tokenizer()
    te1 = _text_encoder(tokenizer, seed, hidden=32)
    te2 = _text_encoder(tokenizer, seed + 1, with_projection=True, hidden=32)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=2, attention_head_dim=(1, 2),
        transformer_layers_per_block=(1, 2), cross_attention_dim=64, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64 + 6 * 8, use_linear_projection=True,
    ).eval()
    vae = arch.build_vae().eval()
    vae.config.scaling_factor = 1.0
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=DDIMScheduler(**arch.scheduler_config()),
    )


def save_random_pipeline(path: str | Path, layout: str = "sd15", seed: int = 0) -> Path:
    """Save a random pipeline ("sd15" or "sdxl" layout) as a diffusers folder at `path`."""
    from ablations.checkpoints import save_pipeline

    pipe = {"sd15": random_pipeline, "sdxl": random_sdxl_pipeline}[layout](seed)
    return save_pipeline(pipe, path)
