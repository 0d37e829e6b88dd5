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


def random_sd15_pipeline(resolution: int = 128, seed: int = 0, prediction_type: str = "epsilon"):
    """SD 1.5's block structure (four levels, CrossAttnDown x3 + Down, 8x VAE with four levels, SD 1.5's PNDM
    scheduler) at small width, generating `resolution`-px images; tiny_sd's tokenizer and a 64-wide text encoder.
    `prediction_type="v_prediction"` gives SD 2.1-v's objective (DDIM, as that model ships)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from . import real_configs

    tokenizer = _tokenizer()
    text_encoder = _text_encoder(tokenizer, seed)
    torch.manual_seed(seed)
    ucfg = real_configs.unet_config("sd15", width_scale=0.1, sample_size=resolution // 8)  # 32/64/128/128 channels
    unet = UNet2DConditionModel(**{**ucfg, "cross_attention_dim": arch.TEXT_DIM}).eval()
    vcfg = {**real_configs.vae_config("sd15"), "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1,
            "sample_size": resolution}
    vae = AutoencoderKL(**vcfg).eval()
    if prediction_type == "epsilon":
        sched = real_configs.scheduler("sd15")
    else:
        sched = DDIMScheduler.from_config({**real_configs.SD21_SCHEDULER, "prediction_type": prediction_type})
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_shapes_folder(root: str | Path, n: int, size: int = 128, seed: int = 7, coco: bool = False) -> tuple[Path, Path]:
    """n shapes-world scenes of split `seed` saved as PNGs of `size` px in `root/images`, with `root/captions.csv`
    (file_name,caption) or, with `coco`, `root/captions.json` in the COCO captions format with two captions per
    image (the scene's caption and a paraphrase that drops the article). Returns (image folder, captions file)."""
    import csv
    import json

    from PIL import Image

    from . import shapes

    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    imgs, caps, _ = shapes.batch(seed, range(n))
    names = []
    for i, (im, cap) in enumerate(zip(imgs, caps)):
        name = f"img_{i:05d}.png"
        Image.fromarray(im).resize((size, size), Image.BICUBIC).save(img_dir / name)
        names.append(name)
    if coco:
        path = root / "captions.json"
        path.write_text(json.dumps({
            "images": [{"id": i, "file_name": nm} for i, nm in enumerate(names)],
            "annotations": [{"id": 2 * i + k, "image_id": i, "caption": c if k == 0 else c.removeprefix("a ")}
                            for i, c in enumerate(caps) for k in range(2)]}))
    else:
        path = root / "captions.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "caption"])
            w.writerows(zip(names, caps))
    return img_dir, path


def save_random_pipeline(path: str | Path, layout: str = "sd15", seed: int = 0) -> Path:
    """Save a random pipeline as a diffusers folder at `path`: layout "sd15" or "sdxl" (tiny widths, 64 px), or
    "sd15_128" / "sd21v_128" (SD 1.5's block structure at small width, 128 px; epsilon or v-prediction)."""
    from foundation.checkpoints import save_pipeline

    pipe = {"sd15": random_pipeline, "sdxl": random_sdxl_pipeline, "sd15_128": lambda s: random_sd15_pipeline(seed=s),
            "sd21v_128": lambda s: random_sd15_pipeline(seed=s, prediction_type="v_prediction")}[layout](seed)
    return save_pipeline(pipe, path)
