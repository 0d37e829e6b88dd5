"""The shared AdamW loop (foundation.training.fit): both schedules, exact resume from a checkpoint."""

import pytest
import torch

from foundation.training import fit, warmup_cosine


def _run(schedule, ckpt=None, crash_at=None, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    model.seen = []

    def loss_at(step):
        model.seen.append(step)
        if step == crash_at:
            raise KeyboardInterrupt
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()

    try:
        done = fit(model, steps, loss_at, lr=1e-2, weight_decay=0.1, schedule=schedule, ckpt=ckpt, ckpt_every=4,
                   progress=False)
    except KeyboardInterrupt:
        return None, model
    return done, model


@pytest.mark.parametrize("schedule", ["warmup_cosine", "one_cycle"])
def test_resume_repeats_the_uninterrupted_run(schedule, tmp_path):
    done, straight = _run(schedule)
    assert done == 12
    _run(schedule, tmp_path / "state.pt", crash_at=6)  # checkpoint at step 4, interrupted at 6
    assert torch.load(tmp_path / "state.pt", weights_only=False)["step"] == 4
    done, resumed = _run(schedule, tmp_path / "state.pt")
    assert done == 12 and resumed.seen == list(range(4, 12))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_warmup_cosine_and_unknown_schedule():
    assert warmup_cosine(1.0, 0, 1000) == pytest.approx(0.01)
    assert warmup_cosine(1.0, 99, 1000) < 1.0 and warmup_cosine(1.0, 999, 1000) < 1e-4
    with pytest.raises(ValueError, match="schedule"):
        fit(torch.nn.Linear(1, 1), 1, lambda step: torch.zeros(()), lr=1e-3, weight_decay=0.0, schedule="step")
