"""Protocols and the job runner: equal budgets, determinism, resume, failures recorded as results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from ablations import job, protocols, resume

SWEEPS = ("norms", "skips", "depth", "blocks", "freeu", "seeds")


def _cfg(*overrides):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=False)


class _StopAtTraining(Exception):
    pass


@pytest.mark.parametrize("protocol", ["finetune", "scratch"])
def test_every_variant_is_trained_with_the_same_plan_and_data(protocol, tmp_path, monkeypatch):
    """Runs every variant of every sweep through `job.compute` up to its training call and records what training
    is handed: a variant whose steps, batch, lr, seed or training set differed, or that skipped training, fails."""
    import tiny_sd.training
    from tiny_sd import shapes

    seen: dict = {}

    def encode(vae, source, tokenizer=None, **kw):
        seen["train_data"] = (source.id, kw["resolution"])
        return object()

    def train(unet, text_encoder, data, plan, ckpt_dir, **kw):
        seen["plan"] = plan
        raise _StopAtTraining

    monkeypatch.setattr(tiny_sd.training, "latent_data", encode)
    monkeypatch.setattr(protocols, "train", train)
    for sweep in SWEEPS:
        got = {}
        for v in _cfg(f"sweep={sweep}").variants:
            cfg = _cfg(f"sweep={sweep}", "budget=smoke", f"protocol={protocol}", f"variant={v}", "seed=3",
                       "progress=false")
            assert cfg.protocol.name == protocol
            seen.clear()
            with pytest.raises(_StopAtTraining):
                job.compute(cfg, tmp_path / sweep / v, resume.ablation_spec(cfg))
            got[v] = dict(seen)
        expected = {"plan": protocols.training_plan(dict(cfg.protocol), 3),
                    "train_data": (f"shapes(seed={shapes.TRAIN_SEED})[first {cfg.budget.train_data}: "
                                   f"{cfg.budget.train_data} rows {rows_digest(cfg.budget.train_data)}]", 64)}
        assert expected["plan"]["steps"] == cfg.budget[f"{protocol}_steps"] > 0
        assert got == {v: expected for v in got}, sweep


def rows_digest(n: int) -> str:
    import hashlib

    import numpy as np

    return hashlib.sha256(np.arange(n, dtype=np.int64).tobytes()).hexdigest()[:12]


def test_protocol_budgets_follow_the_budget_preset():
    for name, key in (("finetune", "finetune_steps"), ("scratch", "scratch_steps")):
        cfg = _cfg(f"protocol={name}", "budget=default")
        assert protocols.training_plan(dict(cfg.protocol), 0)["steps"] == cfg.budget[key] > 0
    assert protocols.training_plan(dict(_cfg("protocol=inference").protocol), 0)["steps"] == 0
    with pytest.raises(ValueError, match="valid: inference, finetune, scratch"):
        protocols.training_plan({"name": "distill"}, 0)


def test_scratch_variant_is_freshly_initialised_and_seeded():
    from tiny_sd import arch

    base = arch.build_unet()
    a = protocols.build_variant(base, {"op": "norms", "kind": "rmsnorm"}, "scratch", seed=1)
    b = protocols.build_variant(base, {"op": "norms", "kind": "rmsnorm"}, "scratch", seed=1)
    c = protocols.build_variant(base, {"op": "none"}, "scratch", seed=2)
    assert torch.equal(a.conv_in.weight, b.conv_in.weight)
    assert not torch.equal(a.conv_in.weight, base.conv_in.weight)
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    deep = protocols.build_variant(base, {"op": "depth", "k": 2}, "scratch", seed=0)
    assert len(deep.down_blocks[0].attentions[0].transformer_blocks) == 2


def _smoke(model_dir, *extra):
    return _cfg("sweep=norms", "budget=smoke", f"model.path={model_dir}", "progress=false", *extra)


def test_job_is_deterministic_resumes_and_writes_contract_files(model_dir, tmp_path):
    cfg = _smoke(model_dir, "variant=layernorm", "seed=1")
    r1 = job.run(cfg, tmp_path / "a")
    r2 = job.run(cfg, tmp_path / "b")
    assert r1["status"] == "ok", r1.get("traceback")
    assert r1["metrics"] == r2["metrics"] and r1["metrics"]["denoising_loss"] > 0
    assert r1["protocol"] == "finetune" and r1["provenance"]["train_steps"] == cfg.budget.finetune_steps
    assert {k: r1["provenance"][k] for k in ("device", "dtype")} == resume.precision(cfg)
    assert r1["ablation"] == {"op": "norms", "kind": "layernorm", "targets": ["resnet", "attention", "output"],
                              "groups": None}
    for f in ("result.json", "samples.png", "config.yaml"):
        assert (tmp_path / "a" / f).exists(), f
    assert not (tmp_path / "a" / "ckpt").exists()
    on_disk = json.loads((tmp_path / "a" / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["baseline"] is False
    # Resume: a finished job is returned from disk without recomputing (the file is not rewritten).
    mtime = (tmp_path / "a" / "result.json").stat().st_mtime_ns
    assert job.run(cfg, tmp_path / "a")["metrics"] == r1["metrics"]
    assert (tmp_path / "a" / "result.json").stat().st_mtime_ns == mtime
    # Another job's finished result in the same directory is never overwritten.
    other = job.run(_smoke(model_dir, "variant=rmsnorm", "seed=1"), tmp_path / "a")
    assert other["status"] == "failed" and "another job" in other["error"]
    assert (tmp_path / "a" / "result.json").stat().st_mtime_ns == mtime


def test_invalid_variant_is_recorded_as_failed_before_compute(model_dir, tmp_path):
    cfg = _smoke(model_dir, "+variants.bad={op:norms,kind:weightnorm}", "variant=bad")
    r = job.run(cfg, tmp_path)
    assert r["status"] == "failed" and "valid: groupnorm, layernorm" in r["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory"), FloatingPointError("nan loss")])
def test_oom_and_nan_are_recorded_and_rerun(model_dir, tmp_path, monkeypatch, exc):
    cfg = _smoke(model_dir, "variant=groupnorm")

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(job, "compute", boom)
    r = job.run(cfg, tmp_path)
    assert r["status"] == "failed" and type(exc).__name__ in r["error"] and r["baseline"] is True
    assert resume.finished(Path(tmp_path), resume.identity(cfg)) is None  # a failed job is retried on resume


def test_changed_budget_never_returns_the_stale_result(model_dir, tmp_path):
    """The sweep directory is named by budget/model *names*; a changed value must not resume the old result."""
    cfg = _smoke(model_dir, "variant=groupnorm")
    assert job.run(cfg, tmp_path)["status"] == "ok"
    changed = _smoke(model_dir, "variant=groupnorm", "budget.n_images=2")
    assert resume.config_hash(changed) != resume.config_hash(cfg)
    r = job.run(changed, tmp_path)
    assert r["status"] == "failed" and "another configuration (protocol, budget" in r["error"]
    # another dtype moves the numbers too: the float32 result is not returned for a bfloat16 run
    other_dtype = "bfloat16" if resume.precision(cfg)["dtype"] != "bfloat16" else "float32"
    r = job.run(_smoke(model_dir, "variant=groupnorm", f"model.dtype={other_dtype}"), tmp_path)
    assert r["status"] == "failed" and "device type or dtype" in r["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"  # the old result is kept


def test_config_hash_covers_the_resolved_device_type_and_dtype(monkeypatch):
    from foundation import loading

    f32 = resume.config_hash(_cfg("model.device=cpu", "model.dtype=float32"))
    assert f32 != resume.config_hash(_cfg("model.device=cpu", "model.dtype=bfloat16"))
    assert f32 == resume.config_hash(_cfg("model.device=cpu", "model.dtype=auto"))  # resolved values, not spellings
    monkeypatch.setattr(loading, "resolve_device", lambda device=None: torch.device("cuda"))  # no GPU needed
    assert resume.config_hash(_cfg("model.device=cuda", "model.dtype=float32")) != f32
    assert resume.precision(_cfg("model.device=cuda", "model.dtype=auto")) == {"device": "cuda", "dtype": "float16"}


@pytest.mark.parametrize("override,match", [
    ("budget.sample_batch=0", r"budget.sample_batch must be an integer >= 1"),
    ("budget.n_images=0", r"budget.n_images must be an integer >= \d"),
    ("budget.grid_images=0", r"budget.grid_images must be an integer >= 1"),
    ("budget.sample_steps=-1", r"budget.sample_steps must be an integer >= 1"),
    ("budget.val_data=0", r"budget.val_data must be an integer >= 1"),
    ("budget.train_data=0", r"budget.train_data must be an integer >= 1"),
    ("budget.guidance_scale=nan", r"budget.guidance_scale must be a finite number"),
    ("budget.finetune_steps=0", r"needs steps >= 1 .*\(set by budget.finetune_steps\)"),
    ("budget.batch_size=0", r"batch_size must be an integer >= 1, got 0 \(set by budget.batch_size\)"),
    ("budget.ckpt_every=0", r"ckpt_every must be an integer >= 1"),
    ("budget.finetune_lr=0", r"lr must be a finite number > 0"),
    ("budget.ema_decay=1.0", r"ema_decay must be null or in \[0, 1\)"),
    ("budget.seeds=0", r"budget.seeds must be an integer >= 1"),
])
def test_bad_budget_is_refused_by_the_preflight(override, match):
    from ablations.preflight import check_budget

    check_budget(_cfg("protocol=finetune", "budget=smoke"))  # the presets pass
    with pytest.raises(ValueError, match=match):
        check_budget(_cfg("protocol=finetune", "budget=smoke", override))


def test_inference_does_not_check_training_values_and_n_images_needs_two_for_image_metrics():
    from ablations.preflight import check_budget

    check_budget(_cfg("protocol=inference", "budget.finetune_steps=0", "budget.train_data=0"))
    check_budget(_cfg("budget.n_images=1", "image_metrics=false"))
    with pytest.raises(ValueError, match="FD/KID need 2"):
        check_budget(_cfg("budget.n_images=1", "image_metrics=true"))


def test_a_job_with_a_bad_budget_fails_before_training(model_dir, tmp_path, monkeypatch):
    """A budget overridden per job (a sweep over budget values) is checked in the job, before it trains."""
    def train(*a, **k):
        raise AssertionError("trained despite a bad budget")

    monkeypatch.setattr(protocols, "train", train)
    r = job.run(_smoke(model_dir, "variant=groupnorm", "budget.sample_batch=0"), tmp_path)
    assert r["status"] == "failed" and "budget.sample_batch must be an integer >= 1" in r["error"]
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_of_another_configuration_is_moved_aside_not_loaded(tmp_path):
    ckpt = tmp_path / "ckpt"
    resume.claim_checkpoint(ckpt, "key-a")
    (ckpt / "train_state.pt").write_text("state of a")
    resume.claim_checkpoint(ckpt, "key-a")  # same job: the checkpoint stays for resume
    assert (ckpt / "train_state.pt").read_text() == "state of a"
    resume.claim_checkpoint(ckpt, "key-b")  # another configuration: moved aside, nothing lost
    assert not (ckpt / "train_state.pt").exists()
    assert (tmp_path / "ckpt.stale-0" / "train_state.pt").read_text() == "state of a"
    assert (ckpt / "job_key.txt").read_text() == "key-b"


def test_a_job_whose_process_keeps_dying_is_recorded_as_failed(model_dir, tmp_path, monkeypatch):
    """Segfaults and the OOM killer end the process, not a Python exception: count starts, give up after 2."""
    cfg = _smoke(model_dir, "variant=groupnorm")

    def die(*a, **k):
        raise SystemExit("killed")  # stands in for the process dying: nothing after this runs in the job

    monkeypatch.setattr(job, "compute", die)
    for _ in range(resume.MAX_ATTEMPTS):
        with pytest.raises(SystemExit):
            job.run(cfg, tmp_path)
        assert not (tmp_path / "result.json").exists()  # an interrupted job is retried on resume
    r = job.run(cfg, tmp_path)
    assert r["status"] == "failed" and "died 2 times" in r["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
    assert job.run(cfg, tmp_path)["status"] == "failed"  # and stays failed on later resumes
    monkeypatch.undo()
    (tmp_path / resume.ATTEMPTS).unlink()  # the documented way to try again
    assert job.run(cfg, tmp_path)["status"] == "ok"
