"""One sampler (`foundation.sampling`) for probes, jobs and metrics: image i of a run gets the same noise, hence the
same image, whatever else is in its batch."""

from __future__ import annotations

import numpy as np
import torch

from foundation import sampling

PROMPTS = ["a red circle", "a blue square left of a green triangle", "a small yellow diamond", "a large purple circle"]


def test_a_prompt_alone_and_inside_a_batch_give_the_same_image(pipe):
    alone, alone_latents = sampling.generate(pipe, PROMPTS[2:3], sampling.image_seeds(5, 1, first=2), sample_steps=3,
                                             guidance_scale=5.0)
    batch, batch_latents = sampling.generate(pipe, PROMPTS, sampling.image_seeds(5, len(PROMPTS)), sample_steps=3,
                                             guidance_scale=5.0)
    assert torch.allclose(alone_latents[0], batch_latents[2], atol=1e-5)
    assert np.abs(alone[0].astype(int) - batch[2].astype(int)).max() <= 1  # uint8 rounding of equal floats
    assert not np.array_equal(batch[0], batch[2])
    # the jobs' batched sampler: same images for batch sizes 1 and 4
    seeds = sampling.image_seeds(5, len(PROMPTS))
    one = sampling.sample(pipe, pipe.unet, PROMPTS, seeds, sample_steps=3, guidance_scale=5.0, batch_size=1, progress=False)
    four = sampling.sample(pipe, pipe.unet, PROMPTS, seeds, sample_steps=3, guidance_scale=5.0, batch_size=4, progress=False)
    assert torch.allclose(one, four, atol=1e-5)


def test_seeds_are_per_image_and_disjoint_across_run_seeds(pipe):
    assert sampling.image_seeds(3, 2, first=4) == sampling.image_seeds(3, 6)[4:]
    assert not set(sampling.image_seeds(0, 100)) & set(sampling.image_seeds(1, 100))
    noise = sampling.paired_latents(pipe, sampling.image_seeds(0, 3))
    assert noise.shape == (3, 4, 16, 16) and noise.dtype == torch.float32
    assert torch.equal(noise[1:2], sampling.paired_latents(pipe, sampling.image_seeds(0, 1, first=1)))
    assert sampling.image_size(pipe) == (64, 64) and sampling.image_size(pipe, 32, None) == (32, 64)


def test_sample_steps_is_the_number_of_denoising_steps(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        sampling.generate(pipe, PROMPTS[:2], sampling.image_seeds(0, 2), sample_steps=3, guidance_scale=5.0)
        assert len(calls) == 3  # one UNet call per step (the CFG halves are batched)
        sampling.sample(pipe, pipe.unet, PROMPTS[:2], sampling.image_seeds(0, 2), sample_steps=2, guidance_scale=1.0,
                        batch_size=1, progress=False)
        assert len(calls) == 3 + 2 * 2  # two batches of one image, two steps each, no CFG
    finally:
        handle.remove()
