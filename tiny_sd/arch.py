"""Architectures of tiny_sd's components: standard diffusers / transformers classes at tiny width.

The UNet keeps SD 1.x's *layout* (CrossAttnDown... DownBlock2D, UNetMidBlock2DCrossAttn,
UpBlock2D ... CrossAttnUpBlock2D, layers_per_block 2, GroupNorm, transformer blocks with self- and
cross-attention) at three resolutions (16, 8, 4) instead of four (64, 32, 16, 8), so every probe and
surgery written against SD 1.x addresses the same module paths (`down_blocks.0.attentions.1...`).
"""

from __future__ import annotations

LATENT_SIZE = 16
IMAGE_SIZE = 64
TEXT_DIM = 64  # = cross_attention_dim


def unet_config(**overrides) -> dict:
    cfg = dict(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        # diffusers' historic naming: for SD 1.x configs `attention_head_dim` is the number of
        # heads. One head per 32 channels -> head dim 32 (tiny head dims are slow in CPU SDPA).
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=8,
        transformer_layers_per_block=1,
    )
    cfg.update(overrides)
    return cfg


def vae_config(**overrides) -> dict:
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # two downsamplings: 64x64x3 -> 16x16x4
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )
    cfg.update(overrides)
    return cfg


def clip_text_config(vocab_size: int, bos: int, eos: int, **overrides) -> dict:
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=64,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_act="quick_gelu",
    )
    cfg.update(overrides)
    return cfg


def clip_vision_config(**overrides) -> dict:
    cfg = dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        projection_dim=64,
        hidden_act="quick_gelu",
    )
    cfg.update(overrides)
    return cfg


def scheduler_config() -> dict:
    """Stable Diffusion 1.x's DDPM training schedule (scaled-linear betas, epsilon prediction)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(**overrides))


def build_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config(**overrides))
