"""The published configs of SD 1.5, SD 2.1 (768-v) and SDXL base 1.0, and random-weight pipelines built from them.

One place for tests (`tests/test_real_architectures.py`) and benchmarks (`benchmarks/real_architectures.py`) to get
the *real* architectures without a download: every dict below is the component's `config.json` (or
`scheduler_config.json`) in the Hugging Face repository, less its metadata (`_diffusers_version`, `_name_or_path`,
`torch_dtype`, `transformers_version`):

- ``sd15``: stable-diffusion-v1-5/stable-diffusion-v1-5. UNet 320/640/1280/1280, 8 heads, conv projections,
  context 768; CLIP ViT-L/14 text (12 x 768, quick_gelu); PNDM, epsilon.
- ``sd21``: stabilityai/stable-diffusion-2-1 (768-v). UNet 320/640/1280/1280, heads 5/10/20/20, linear projections,
  upcast attention, context 1024; OpenCLIP ViT-H/14 text (23 x 1024, gelu); DDIM, v_prediction.
- ``sdxl``: stabilityai/stable-diffusion-xl-base-1.0. UNet 320/640/1280, no attention at level 0, heads 5/10/20,
  transformer depths 1/2/10, text_time added conditioning (256-d time ids, 2816-d input), context 2048; CLIP ViT-L
  text (12 x 768) + OpenCLIP bigG/14 text with projection (32 x 1280); Euler, epsilon.

Each component has its published parameter count (tests/test_real_architectures.py): UNets 859,520,964 /
865,910,724 / 2,567,463,684; text encoders 123,060,480 / 340,387,840 / 123,060,480 + 694,659,840; VAE 83,653,863.

What is *not* real, on purpose:

- the weights (random, seeded);
- the tokenizer: tiny_sd's CLIP-format BPE tokenizer (`tiny_sd/weights/pipeline/tokenizer`, 578 tokens, pads with the
  end token as SD 1.x does) with SD's 77-token context (`model_max_length=77`); both SDXL tokenizers are that one
  (the real `tokenizer_2` pads with "!"). The text encoders keep the real vocabulary of 49,408 rows, so every id is
  valid; tiny's end token has the highest id of its vocabulary, so CLIP's legacy `eos_token_id == 2` pooling (argmax
  of the ids) still pools at the end token, as in the real models. Because the tokenizer holds the shapes
  vocabulary, `foundation.prompts.is_tiny_sd(pipe)` is True for these pipelines: prompts are checked against the
  shapes-world vocabulary (`check_prompts`), which the captions used here pass, and the tiny_sd-only `evaluate` probe
  would not refuse them. Nothing else reads `is_tiny_sd`;
- `sample_size` (the UNet's default latent side, i.e. the default image size of a pipeline call) can be overridden,
  so CPU runs sample 64-128 px images; no weight depends on it;
- ``width_scale`` (SDXL only by default, any arch if asked) multiplies the UNet's `block_out_channels`, keeping
  block types, depths, per-level head counts (so head dims scale), the added-conditioning interface (`text_time`,
  256-d time ids, 2816-d input) and the cross-attention width 2048 of the two real text encoders;
- ``text_layers`` caps the text encoders' depth (hidden sizes, heads, vocabulary and projection stay real).

`build_pipeline("sdxl", width_scale=0.5)` is SDXL with 160/320/640 channels (head dim 32 instead of 64).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

ARCHS = ("sd15", "sd21", "sdxl")
TOKENIZER_DIR = Path(__file__).resolve().parent / "weights" / "pipeline" / "tokenizer"
CONTEXT = 77  # SD's text context (the CLIP text encoders' max_position_embeddings)

# ------------------------------------------------------------------------------------------------- SD 1.5
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD_VAE = {  # SD 1.x and 2.x share it (SD 2.1's sample_size is 768)
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_VIT_L_TEXT = {  # openai/clip-vit-large-patch14's text tower: SD 1.x text_encoder, SDXL text_encoder
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# ------------------------------------------------------------------------------------------------- SD 2.1 (768-v)
SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}
SD21_VAE = {**SD_VAE, "sample_size": 768}
OPENCLIP_VIT_H_TEXT = {  # stabilityai/stable-diffusion-2-1 text_encoder (OpenCLIP ViT-H/14, penultimate layer kept)
    **CLIP_VIT_L_TEXT,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# ------------------------------------------------------------------------------------------------- SDXL base 1.0
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_VAE = {**SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}
OPENCLIP_BIGG_TEXT = {  # stabilityai/stable-diffusion-xl-base-1.0 text_encoder_2 (CLIPTextModelWithProjection)
    **CLIP_VIT_L_TEXT,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

CONFIGS = {
    "sd15": dict(unet=SD15_UNET, vae=SD_VAE, text=[CLIP_VIT_L_TEXT], scheduler=SD15_SCHEDULER,
                 pipeline="StableDiffusionPipeline", img2img="StableDiffusionImg2ImgPipeline"),
    "sd21": dict(unet=SD21_UNET, vae=SD21_VAE, text=[OPENCLIP_VIT_H_TEXT], scheduler=SD21_SCHEDULER,
                 pipeline="StableDiffusionPipeline", img2img="StableDiffusionImg2ImgPipeline"),
    "sdxl": dict(unet=SDXL_UNET, vae=SDXL_VAE, text=[CLIP_VIT_L_TEXT, OPENCLIP_BIGG_TEXT], scheduler=SDXL_SCHEDULER,
                 pipeline="StableDiffusionXLPipeline", img2img="StableDiffusionXLImg2ImgPipeline"),
}


def _arch(arch: str) -> dict:
    if arch not in CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return CONFIGS[arch]


def _heads(cfg: dict) -> list[int]:
    """Attention heads per level (diffusers' historic name: `attention_head_dim` is the head *count* when
    `num_attention_heads` is unset, as in every SD config)."""
    n = len(cfg["block_out_channels"])
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]
    return list(heads) if isinstance(heads, (list, tuple)) else [heads] * n


def unet_config(arch: str, width_scale: float = 1.0, sample_size: int | None = None) -> dict:
    """The UNet config of `arch`; ``width_scale`` multiplies `block_out_channels` (structure kept, see the module
    docstring), ``sample_size`` replaces the default latent side."""
    cfg = copy.deepcopy(_arch(arch)["unet"])
    cfg.pop("_class_name")
    if width_scale != 1.0:
        groups, heads = cfg["norm_num_groups"], _heads(cfg)
        chans = []
        for c, h in zip(cfg["block_out_channels"], heads):
            new = c * width_scale
            step = math.lcm(groups, h)
            if new != int(new) or int(new) % step:
                raise ValueError(f"width_scale={width_scale} gives {new} channels where {c} had {h} heads and "
                                 f"GroupNorm({groups}): channels must stay a multiple of {step} (SD/SDXL: 0.5 or 1)")
            chans.append(int(new))
        cfg["block_out_channels"] = chans
    if sample_size is not None:
        cfg["sample_size"] = int(sample_size)
    return cfg


def vae_config(arch: str) -> dict:
    cfg = copy.deepcopy(_arch(arch)["vae"])
    cfg.pop("_class_name")
    return cfg


def text_configs(arch: str, text_layers: int | None = None) -> list[dict]:
    """CLIPTextConfig kwargs of each text encoder of `arch`; ``text_layers`` caps `num_hidden_layers`."""
    out = []
    for c in _arch(arch)["text"]:
        c = copy.deepcopy(c)
        c.pop("architectures")
        if text_layers is not None:
            c["num_hidden_layers"] = min(int(text_layers), c["num_hidden_layers"])
        out.append(c)
    return out


def scheduler(arch: str):
    import diffusers

    cfg = copy.deepcopy(_arch(arch)["scheduler"])
    # from_config, as a pipeline folder is loaded: the published files carry keys a class does not take
    # (`skip_prk_steps` in DDIM's and Euler's), which the loader ignores
    return getattr(diffusers, cfg.pop("_class_name")).from_config(cfg)


def tokenizer(context: int = CONTEXT):
    """tiny_sd's CLIP-format tokenizer with SD's 77-token context."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=context)


def _seeded(seed: int):
    torch.manual_seed(seed)
    return seed


def build_pipeline(arch: str, width_scale: float | None = None, seed: int = 0, sample_size: int | None = None,
                   text_layers: int | None = None, dtype: torch.dtype = torch.float32):
    """A diffusers pipeline of `arch` ("sd15", "sd21", "sdxl") with the real configs and random weights.

    ``width_scale``: None = 1.0 for SD 1.5/2.1 and 0.5 for SDXL (its full 2.6B-parameter UNet plus two text
    encoders do not fit a 24 GiB CPU box twice, in a test process and in a CLI subprocess). Each component is
    seeded from ``seed`` on its own, so one component's size does not change another's weights.
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = _arch(arch)
    scale = (0.5 if arch == "sdxl" else 1.0) if width_scale is None else float(width_scale)
    _seeded(seed)
    unet = UNet2DConditionModel(**unet_config(arch, scale, sample_size)).eval()
    _seeded(seed + 1)
    vae = AutoencoderKL(**vae_config(arch)).eval()
    encoders = []
    for i, c in enumerate(text_configs(arch, text_layers)):
        _seeded(seed + 2 + i)
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**c)).eval())
    tok = tokenizer()
    parts = dict(vae=vae, unet=unet, scheduler=scheduler(arch), tokenizer=tok, text_encoder=encoders[0])
    if arch == "sdxl":
        parts.update(text_encoder_2=encoders[1], tokenizer_2=tok)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = getattr(diffusers, spec["pipeline"])(**parts)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img(pipe):
    """The image-to-image pipeline over the same components (another pipeline class that calls the UNet)."""
    import diffusers

    arch = "sdxl" if hasattr(pipe, "text_encoder_2") else "sd"
    name = "StableDiffusionXLImg2ImgPipeline" if arch == "sdxl" else "StableDiffusionImg2ImgPipeline"
    out = getattr(diffusers, name)(**pipe.components)
    out.set_progress_bar_config(disable=True)
    return out


def describe(pipe) -> dict:
    """Parameter counts and the config keys that identify the architecture (for logs and results files)."""
    u = pipe.unet.config
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    d = {"unet_params": count(pipe.unet), "vae_params": count(pipe.vae),
         "text_params": [count(pipe.text_encoder)] + ([count(pipe.text_encoder_2)] if hasattr(pipe, "text_encoder_2")
                                                      else []),
         "block_out_channels": list(u.block_out_channels), "attention_head_dim": u.attention_head_dim,
         "transformer_layers_per_block": u.transformer_layers_per_block, "cross_attention_dim": u.cross_attention_dim,
         "use_linear_projection": u.use_linear_projection, "sample_size": u.sample_size,
         "text_layers": [pipe.text_encoder.config.num_hidden_layers]
         + ([pipe.text_encoder_2.config.num_hidden_layers] if hasattr(pipe, "text_encoder_2") else []),
         "scheduler": type(pipe.scheduler).__name__,
         "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon")}
    return d
