"""Real multiruns in subprocesses: `sweep=norms budget=smoke` end to end, resume after a kill, a failing variant,
and the submitit_local launcher. Marked slow; they still run in CI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _cmd(sweep_dir, model_dir, *overrides):
    return [sys.executable, "-m", "ablations", "budget=smoke", f"model.path={model_dir}", "progress=false",
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _run(cmd, timeout=240):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _results(sweep_dir) -> dict[tuple[str, int], dict]:
    out = {}
    for f in Path(sweep_dir, "jobs").glob("*/result.json"):
        r = json.loads(f.read_text())
        out[(r["variant"], r["seed"])] = r
    return out


def test_norms_sweep_smoke_produces_the_table(tmp_path, model_dir):
    t0 = time.time()
    _run(_cmd(tmp_path, model_dir, "sweep=norms"))
    wall = time.time() - t0
    variants = ["groupnorm", "layernorm", "layernorm2d", "instancenorm", "rmsnorm", "batchnorm", "none"]
    res = _results(tmp_path)
    assert set(res) == {(v, s) for v in variants for s in (0, 1)}
    planned = json.loads((tmp_path / "expected_jobs.json").read_text())["jobs"]
    assert {(j["variant"], j["seed"]) for j in planned} == set(res)
    assert all(r["status"] == "ok" for r in res.values()), {k: r["error"] for k, r in res.items()}
    assert {r["provenance"]["train_steps"] for r in res.values()} == {2}  # the baseline is finetuned too
    assert [r["baseline"] for k, r in res.items() if k[0] == "groupnorm"] == [True, True]
    for d in Path(tmp_path, "jobs").iterdir():
        assert {"result.json", "samples.png", "config.yaml"} <= {f.name for f in d.iterdir()}, d
    table = pd.read_csv(tmp_path / "results.csv")
    assert len(table) == 14 and "denoising_loss" in table.columns
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["variant"]) == set(variants)
    for f in ("results.parquet", "table.tex", "report/index.html"):
        assert (tmp_path / f).exists(), f
    assert wall < 180, f"smoke sweep took {wall:.0f}s"


def test_killed_sweep_resumes_and_failing_variant_does_not_stop_it(tmp_path, model_dir):
    overrides = ["sweep=norms", "variant=groupnorm,layernorm,broken", "seed=0",
                 # a runtime failure (the variant diverges), not bad input: bad input stops the
                 # whole command before any compute (test_bad_variant_fails_before_compute)
                 "+variants.broken={op:skips,mode:scale,scale:1e38}"]  # valid input that overflows
    first = tmp_path / "jobs" / "groupnorm__seed0" / "result.json"
    proc = subprocess.Popen(_cmd(tmp_path, model_dir, *overrides), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not first.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert first.exists(), "the first job never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # our own subprocess group, killed mid-sweep
        proc.wait()
    assert json.loads(first.read_text())["status"] == "ok"
    mtime = first.stat().st_mtime_ns
    p = _run(_cmd(tmp_path, model_dir, *overrides))
    assert first.stat().st_mtime_ns == mtime  # finished job skipped, not recomputed
    assert "already finished" in p.stdout + p.stderr + (tmp_path / "jobs/groupnorm__seed0/ablations.log").read_text()
    res = _results(tmp_path)
    assert res[("layernorm", 0)]["status"] == "ok"
    assert res[("broken", 0)]["status"] == "failed" and "non-finite" in res[("broken", 0)]["error"]
    table = pd.read_csv(tmp_path / "results.csv")  # on_multirun_end ran despite the failure
    assert set(table["status"]) == {"ok", "failed"} and len(table) == 3
    planned = json.loads((tmp_path / "expected_jobs.json").read_text())["jobs"]  # command-line grid wins
    assert sorted(j["variant"] for j in planned) == ["broken", "groupnorm", "layernorm"]


def test_bad_variant_fails_before_compute(tmp_path, model_dir):
    p = subprocess.run(_cmd(tmp_path, model_dir, "sweep=norms", "variant=groupnorm,bad", "seed=0",
                            "+variants.bad={op:norms,kind:groupnorm,groups:7}"),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "variant 'bad'" in p.stderr and "does not divide" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "jobs").exists()  # nothing was computed


def test_bad_budget_stops_the_sweep_before_compute(tmp_path, model_dir):
    """Checked once in the preflight: otherwise every job trains, then fails in sampling."""
    p = subprocess.run(_cmd(tmp_path, model_dir, "sweep=norms", "variant=groupnorm,layernorm", "seed=0",
                            "budget.sample_batch=0"),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "budget.sample_batch must be an integer >= 1" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "jobs").exists()


def test_submitit_local_launcher(tmp_path, model_dir):
    _run(_cmd(tmp_path, model_dir, "sweep=norms", "variant=groupnorm", "seed=0", "hydra/launcher=submitit_local",
              "hydra.launcher.timeout_min=5"))
    res = _results(tmp_path)
    assert res[("groupnorm", 0)]["status"] == "ok"
    assert (tmp_path / "results.csv").exists()


def test_single_job_runs_from_the_command_line(tmp_path, model_dir):
    """No sweep: `ablation=` picks the surgery; the job writes its files into hydra.run.dir."""
    p = subprocess.run([sys.executable, "-m", "ablations", "budget=smoke", f"model.path={model_dir}", "progress=false",
                        "ablation=norms", "ablation.kind=rmsnorm", f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "ok" and r["ablation"]["kind"] == "rmsnorm" and r["protocol"] == "inference"


def test_misspelt_variant_stops_the_sweep_before_compute(tmp_path, model_dir):
    p = subprocess.run(_cmd(tmp_path, model_dir, "sweep=norms", "variant=groupnorm,layernrom", "seed=0"),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "unknown variant(s) 'layernrom'" in p.stderr and "layernorm" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "jobs").exists()
