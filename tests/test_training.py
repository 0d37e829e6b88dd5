"""The shared denoiser training loop: loss goes down, resume is exact, bad numerics fail loudly."""

import pytest
import torch

from tiny_sd import arch, testing, training


def _tiny_unet(seed=0):
    torch.manual_seed(seed)
    return arch.build_unet(block_out_channels=(32, 32, 32), attention_head_dim=(1, 1, 1), layers_per_block=1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    pipe = testing.random_pipeline()
    data = training.encode_shapes(pipe, 64, cache=False, progress=False)
    return pipe, data


def test_encode_shapes_shapes_and_scaling(setup):
    pipe, data = setup
    assert data.latents.shape == (64, 4, 16, 16) and data.input_ids.shape == (64, pipe.tokenizer.model_max_length)
    assert len(data.captions) == 64 and data.input_ids.dtype == torch.int64


def test_resume_is_exact(setup, tmp_path):
    pipe, data = setup
    kw = dict(batch_size=8, seed=3, ema_decay=0.9, progress=False, ckpt_every=2)
    a = _tiny_unet()
    training.train_unet(a, pipe.text_encoder, data, steps=4, **kw)
    b = _tiny_unet()
    training.train_unet(b, pipe.text_encoder, data, steps=2, ckpt_dir=tmp_path, **kw)  # "interrupted" at 2
    b2 = _tiny_unet()  # a fresh process: new model object, state comes from the checkpoint
    res = training.train_unet(b2, pipe.text_encoder, data, steps=4, ckpt_dir=tmp_path, **kw)
    assert res["steps"] == 4 and len(res["loss"]) == 4
    for (k, va), vb in zip(a.state_dict().items(), b2.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_ema_keeps_the_trained_batchnorm_statistics(setup):
    """The EMA averages parameters; buffers (running statistics of a BatchNorm swap) must end as trained, not as
    they were before training (the final EMA load would otherwise reset them: eval-mode BatchNorm on (0, 1))."""
    from ablations.norms import swap_norms

    pipe, data = setup
    unet = swap_norms(_tiny_unet(), "batchnorm")
    training.train_unet(unet, pipe.text_encoder, data, steps=3, batch_size=8, seed=3, ema_decay=0.999,
                        progress=False)
    bns = [m for m in unet.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(int(m.num_batches_tracked) == 3 for m in bns)
    assert max(float(m.running_mean.abs().max()) for m in bns) > 1e-3


def test_text_encoder_stays_frozen_unless_text_lr_then_trains_and_resumes_exactly(setup, tmp_path):
    """The ablation protocols rely on a frozen conditioner; `text_lr` (GLIDE-style joint training) moves it, with
    its EMA exported at the end, and a resumed run reproduces the uninterrupted one for both models."""
    import copy

    pipe, data = setup
    te0 = pipe.text_encoder
    frozen = copy.deepcopy(te0)
    training.train_unet(_tiny_unet(), frozen, data, steps=2, batch_size=8, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(te0.state_dict().values(), frozen.state_dict().values()))
    assert not any(p.requires_grad for p in frozen.parameters())

    kw = dict(batch_size=8, seed=3, ema_decay=0.5, progress=False, ckpt_every=2, text_lr=1e-3, lr=1e-3, warmup=1)
    te_a, u_a = copy.deepcopy(te0), _tiny_unet()
    training.train_unet(u_a, te_a, data, steps=4, **kw)
    moved = max(float((a - b).abs().max()) for a, b in zip(te0.state_dict().values(), te_a.state_dict().values()))
    assert moved > 1e-4
    assert not any(p.requires_grad for p in te_a.parameters())  # handed back frozen, ready for sampling
    te_b = copy.deepcopy(te0)
    training.train_unet(_tiny_unet(), te_b, data, steps=2, ckpt_dir=tmp_path, **kw)  # "interrupted" at 2
    te_c, u_c = copy.deepcopy(te0), _tiny_unet()  # a fresh process: both models come from the checkpoint
    training.train_unet(u_c, te_c, data, steps=4, ckpt_dir=tmp_path, **kw)
    for a, b in ((te_a, te_c), (u_a, u_c)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(va, vb, msg=k)


def test_null_tail_mask_marks_end_of_text_and_padding():
    eos = 9
    ids = torch.tensor([[1, 4, 5, eos, eos, eos], [1, eos, eos, eos, eos, eos], [1, 4, 5, 6, 7, eos]])
    want = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(training.null_tail_mask(ids, eos), want)


def test_null_tail_feeds_the_unet_the_empty_prompts_tail_and_pulls_the_encoder_there(setup, tmp_path):
    """The UNet only ever sees the start token and the words of a prompt; the tail term shrinks, and resume is
    exact with it."""
    import copy

    pipe, data = setup
    with pytest.raises(ValueError, match="needs text_lr"):
        training.train_unet(_tiny_unet(), copy.deepcopy(pipe.text_encoder), data, steps=1, null_tail=1.0,
                            progress=False)
    te, unet = copy.deepcopy(pipe.text_encoder), _tiny_unet()
    eos = int(data.input_ids[0, -1])
    seen = []
    unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].detach().clone()))
    kw = dict(batch_size=8, seed=3, ema_decay=None, progress=False, text_lr=3e-3, lr=1e-3, warmup=1, null_tail=1.0)
    res = training.train_unet(unet, te, data, steps=12, **kw)
    assert len(res["tail_loss"]) == 12 and res["tail_loss"][-1] < 0.5 * res["tail_loss"][0]
    # step 0 ran the untouched encoder: the tail the UNet saw is the empty prompt's, the words are the prompt's
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, len(data), (8,), generator=gen)
    ids = data.input_ids[idx]
    drop = torch.rand(8, generator=gen) < 0.1
    uncond = data.input_ids[0].clone()
    uncond[1:] = eos
    ids = torch.where(drop[:, None], uncond[None], ids)
    with torch.no_grad():
        cond, null = pipe.text_encoder(ids)[0], pipe.text_encoder(uncond[None])[0]
    tail = training.null_tail_mask(ids, eos)
    torch.testing.assert_close(seen[0][tail], null.expand_as(cond)[tail])
    torch.testing.assert_close(seen[0][~tail], cond[~tail])
    assert not torch.allclose(cond[tail], null.expand_as(cond)[tail])  # the raw tail does carry the prompt

    kw["ema_decay"], kw["ckpt_every"] = 0.5, 2
    te_a, u_a = copy.deepcopy(pipe.text_encoder), _tiny_unet()
    a = training.train_unet(u_a, te_a, data, steps=4, **kw)
    training.train_unet(_tiny_unet(), copy.deepcopy(pipe.text_encoder), data, steps=2, ckpt_dir=tmp_path, **kw)
    te_c, u_c = copy.deepcopy(pipe.text_encoder), _tiny_unet()
    c = training.train_unet(u_c, te_c, data, steps=4, ckpt_dir=tmp_path, **kw)
    assert c["tail_loss"] == pytest.approx(a["tail_loss"])
    for x, y in ((te_a, te_c), (u_a, u_c)):
        for (k, va), vb in zip(x.state_dict().items(), y.state_dict().values()):
            torch.testing.assert_close(va, vb, msg=k)


def test_training_reduces_loss(setup):
    pipe, data = setup
    u = _tiny_unet()
    res = training.train_unet(u, pipe.text_encoder, data, steps=30, batch_size=16, lr=2e-3, progress=False,
                              ema_decay=None, min_snr_gamma=None, warmup=1)
    first, last = sum(res["loss"][:5]) / 5, sum(res["loss"][-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_min_snr_weight_caps_low_noise_steps():
    from diffusers import DDPMScheduler

    ac = DDPMScheduler.from_config(arch.scheduler_config()).alphas_cumprod
    t = torch.tensor([0, 500, 999])
    w = training.min_snr_weight(ac, t, 5.0)
    assert w[0] < 0.01 and torch.isclose(w[2], torch.tensor(1.0))  # high SNR down-weighted, low SNR weight 1
    assert torch.equal(training.min_snr_weight(ac, t, None), torch.ones(3))


def test_non_finite_loss_raises(setup):
    pipe, data = setup
    u = _tiny_unet()
    with torch.no_grad():
        u.conv_in.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        training.train_unet(u, pipe.text_encoder, data, steps=2, batch_size=4, progress=False)


def test_lr_schedule_warms_up_then_holds_or_follows_a_cosine():
    from tiny_sd.training import lr_factor

    assert lr_factor(0, 1000, 100, None) == pytest.approx(0.01) and lr_factor(99, 1000, 100, None) == 1.0
    assert lr_factor(999, 1000, 100, None) == 1.0  # constant: the protocols' fixed-budget finetunes
    cos = [lr_factor(s, 1000, 100, 0.05) for s in range(100, 1001)]
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.05)
    assert cos[450] == pytest.approx(0.525, abs=1e-3)  # half-way: the mean of the two ends
    assert all(a >= b for a, b in zip(cos, cos[1:]))  # monotone decay
    assert lr_factor(5000, 1000, 100, 0.05) == pytest.approx(0.05)  # past the end it stays at the floor
