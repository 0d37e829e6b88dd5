"""Prompt and image-size checks that hold for any Stable Diffusion pipeline, run before any compute so a bad input
is one ValueError naming the fix (`tiny_sd.prompts` adds the shapes world's vocabulary)."""

from __future__ import annotations


def is_tiny_sd(pipe) -> bool:
    """The embedded model (marked by `load_pipeline`) or a pipeline with its shapes-world tokenizer."""
    if getattr(pipe.unet, "config_name_tiny_sd", False):
        return True
    tok = getattr(pipe, "tokenizer", None)
    return tok is not None and len(tok) < 1000 and "circle</w>" in tok.get_vocab()


def check_prompts(pipe, prompts, height: int | None = None, width: int | None = None) -> None:
    """Every prompt fits the text encoder's context, and height/width are positive multiples of the UNet's total
    downsampling (VAE factor x 2^(levels - 1)), so the latents divide evenly at every level."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tok = getattr(pipe, "tokenizer", None)
    if tok is not None:
        for p in prompts:
            n = len(tok(p).input_ids)
            if n > tok.model_max_length:
                raise ValueError(f"prompt has {n} tokens (with start/end), more than the text encoder's "
                                 f"{tok.model_max_length}: {p!r}")
    down = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    mult = pipe.vae_scale_factor * down
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % mult):
            raise ValueError(f"{name}={v} is not supported by this pipeline: use a positive multiple of {mult} "
                             f"(VAE factor {pipe.vae_scale_factor} x UNet downsampling {down}); "
                             f"trained size is {pipe.unet.config.sample_size * pipe.vae_scale_factor}.")
