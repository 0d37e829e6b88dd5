"""The shared denoiser training loop: loss goes down, resume is exact, bad numerics fail loudly."""

import pytest
import torch

from tiny_sd import arch, testing, training
from tiny_sd.training import TrainConfig


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
    kw = dict(batch_size=8, seed=3, ema_decay=0.9, ckpt_every=2)
    a = _tiny_unet()
    training.train_unet(a, pipe.text_encoder, data, TrainConfig(steps=4, **kw), progress=False)
    b = _tiny_unet()
    training.train_unet(b, pipe.text_encoder, data, TrainConfig(steps=2, **kw), ckpt_dir=tmp_path,
                        progress=False)  # "interrupted" at 2
    b2 = _tiny_unet()  # a fresh process: new model object, state comes from the checkpoint
    res = training.train_unet(b2, pipe.text_encoder, data, TrainConfig(steps=4, **kw), ckpt_dir=tmp_path,
                              progress=False)
    assert res["steps"] == 4 and len(res["loss"]) == 4
    for (k, va), vb in zip(a.state_dict().items(), b2.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_ema_keeps_the_trained_batchnorm_statistics(setup):
    """The EMA averages parameters; buffers (running statistics of a BatchNorm swap) must end as trained, not as
    they were before training (the final EMA load would otherwise reset them: eval-mode BatchNorm on (0, 1))."""
    from ablations.norms import swap_norms

    pipe, data = setup
    unet = swap_norms(_tiny_unet(), "batchnorm")
    training.train_unet(unet, pipe.text_encoder, data, TrainConfig(steps=3, batch_size=8, seed=3, ema_decay=0.999),
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
    training.train_unet(_tiny_unet(), frozen, data, TrainConfig(steps=2, batch_size=8), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(te0.state_dict().values(), frozen.state_dict().values()))
    assert not any(p.requires_grad for p in frozen.parameters())

    kw = dict(batch_size=8, seed=3, ema_decay=0.5, ckpt_every=2, text_lr=1e-3, lr=1e-3, warmup=1)
    te_a, u_a = copy.deepcopy(te0), _tiny_unet()
    training.train_unet(u_a, te_a, data, TrainConfig(steps=4, **kw), progress=False)
    moved = max(float((a - b).abs().max()) for a, b in zip(te0.state_dict().values(), te_a.state_dict().values()))
    assert moved > 1e-4
    assert not any(p.requires_grad for p in te_a.parameters())  # handed back frozen, ready for sampling
    te_b = copy.deepcopy(te0)
    training.train_unet(_tiny_unet(), te_b, data, TrainConfig(steps=2, **kw), ckpt_dir=tmp_path,
                        progress=False)  # "interrupted" at 2
    te_c, u_c = copy.deepcopy(te0), _tiny_unet()  # a fresh process: both models come from the checkpoint
    training.train_unet(u_c, te_c, data, TrainConfig(steps=4, **kw), ckpt_dir=tmp_path, progress=False)
    for a, b in ((te_a, te_c), (u_a, u_c)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(va, vb, msg=k)


def test_training_reduces_loss(setup):
    pipe, data = setup
    u = _tiny_unet()
    config = TrainConfig(steps=30, batch_size=16, lr=2e-3, ema_decay=None, min_snr_gamma=None, warmup=1)
    res = training.train_unet(u, pipe.text_encoder, data, config, progress=False)
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
        training.train_unet(u, pipe.text_encoder, data, TrainConfig(steps=2, batch_size=4), progress=False)


def test_lr_schedule_warms_up_then_holds_or_follows_a_cosine():
    from tiny_sd.training import lr_factor

    assert lr_factor(0, 1000, 100, None) == pytest.approx(0.01) and lr_factor(99, 1000, 100, None) == 1.0
    assert lr_factor(999, 1000, 100, None) == 1.0  # constant: the protocols' fixed-budget finetunes
    cos = [lr_factor(s, 1000, 100, 0.05) for s in range(100, 1001)]
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.05)
    assert cos[450] == pytest.approx(0.525, abs=1e-3)  # half-way: the mean of the two ends
    assert all(a >= b for a, b in zip(cos, cos[1:]))  # monotone decay
    assert lr_factor(5000, 1000, 100, 0.05) == pytest.approx(0.05)  # past the end it stays at the floor
