"""Reading job files into the tidy results table, and the statistics of the summary."""
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports import build_report, load_jobs, summarize, t_interval
from reports.summary import PAIRED_METHOD, QUADRATURE_METHOD, SEED_INVARIANT_METHOD, SINGLE_SEED_METHOD
from reports.testing import HIB, make_shapes_sweep, make_sweep, write_job


def test_t_interval_matches_known_case_and_scipy():
    # [1..5]: mean 3, s = sqrt(2.5), t_{0.975,4} = 2.776445 -> half-width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    mean, lo, hi = t_interval([1, 2, 3, 4, 5])
    assert mean == 3.0
    assert hi - mean == pytest.approx(1.963243, abs=1e-6)
    x = np.array([0.31, 0.29, 0.35, 0.30])
    ref = stats.t.interval(0.95, df=len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert t_interval(x)[1:] == pytest.approx(ref, rel=1e-12)


def test_t_interval_single_seed_has_no_interval():
    mean, lo, hi = t_interval([4.0, float("nan")])
    assert mean == 4.0 and math.isnan(lo) and math.isnan(hi)


def test_paired_delta_matches_paired_t_test():
    base = np.array([20.0, 25.0, 30.0, 22.0])           # large seed-to-seed spread
    var = base + np.array([1.1, 0.9, 1.0, 1.05])         # shifted by ~1 on every seed
    rows = [{"variant": v, "seed": s, "status": "ok", "fid": x}
            for v, xs in (("baseline", base), ("ablated", var)) for s, x in enumerate(xs)]
    summ = summarize(pd.DataFrame(rows), ["fid"], {"fid": False}, "baseline").set_index("variant")
    ref = stats.ttest_rel(var, base).confidence_interval(0.95)
    got = summ.loc["ablated"]
    assert got["delta"] == pytest.approx((var - base).mean())
    assert (got["delta_ci_lo"], got["delta_ci_hi"]) == pytest.approx((ref.low, ref.high), rel=1e-12)
    # Pairing is what makes this significant: the unpaired CIs of the two means overlap.
    assert bool(got["delta_excludes_zero"])
    assert got["ci_lo"] < summ.loc["baseline", "ci_hi"]
    assert bool(summ.loc["baseline", "best"]) and not bool(got["best"])  # lower FID is better


@pytest.fixture(scope="module")
def incomplete_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    values = make_sweep(root, variants=("baseline", "no_norm"), seeds=(0, 1, 2))
    write_job(root, "frozen", 0, metrics={"fid": 30.0, "kid": 0.02, "clip_score": 0.25})
    write_job(root, "frozen", 1, status="failed", error="RuntimeError: loss is NaN")
    (root / "jobs" / "frozen__seed2").mkdir()             # started, never wrote result.json
    write_job(root, "broken", 0, metrics={"fid": 1.0})
    (root / "jobs" / "broken__seed0" / "result.json").write_text("{not json")
    return root, values, build_report(root)


def test_results_table_equals_job_files(incomplete_sweep):
    root, values, res = incomplete_sweep
    for table in (pd.read_csv(res["results"]), pd.read_parquet(res["results_parquet"])):
        ok = table[table["status"] == "ok"].set_index(["variant", "seed"])
        for (variant, seed), metrics in values.items():
            for name, value in metrics.items():
                assert ok.loc[(variant, seed), name] == value   # exact: no rounding between job file and table
        assert ok.loc[("frozen", 0), "fid"] == 30.0
        assert set(table.columns) >= {"variant", "seed", "status", "error", "protocol", "fid", "kid", "clip_score"}
        assert len(table) == 6 + 3 + 3                    # one row per variant x seed, missing ones included


def test_results_rows_carry_the_job_provenance_as_columns(incomplete_sweep):
    root, values, res = incomplete_sweep
    jobs = load_jobs(root)
    assert jobs.metrics == ["fid", "kid", "clip_score"]       # provenance columns are never taken for metrics
    assert set(pd.read_csv(res["summary"])["metric"]) == set(HIB)
    for table in (pd.read_csv(res["results"]), pd.read_parquet(res["results_parquet"])):
        for col in ("prov_implementation", "prov_extractor", "prov_weights_sha256", "prov_resize", "prov_n",
                    "prov_seeds", "prov_sampler", "prov_sample_steps", "prov_guidance_scale", "prov_fid_status",
                    "prov_primary_metric"):
            assert col in table.columns, col
        assert "prov_reference" not in table.columns          # mappings stay in result.json
        ok = table[table["status"] == "ok"].set_index("job")
        for job, row in ok.iterrows():
            prov = json.loads((root / job / "result.json").read_text())["provenance"]
            for key, value in prov.items():
                if not isinstance(value, dict):
                    expected = json.dumps(value) if isinstance(value, list) else value
                    assert row[f"prov_{key}"] == expected, (job, key)
        assert (ok["prov_seeds"] == "[0, 1, 2, 3]").all() and (ok["prov_n"] == 256).all()
        missing = table[table["status"] == "missing"]
        assert missing["prov_extractor"].isna().all()         # no job, no provenance


def test_provenance_recorded_with_different_types_still_writes_parquet(tmp_path):
    write_job(tmp_path, "baseline", 0, metrics={"fid": 1.0}, baseline=True)
    write_job(tmp_path, "other", 0, metrics={"fid": 2.0}, provenance={"sample_steps": "25, then 50"})
    jobs = load_jobs(tmp_path)
    jobs.results.to_parquet(tmp_path / "r.parquet", index=False)
    back = pd.read_parquet(tmp_path / "r.parquet").set_index("variant")
    assert back.loc["baseline", "prov_sample_steps"] == "25" and back.loc["other", "prov_sample_steps"] == "25, then 50"


def test_failed_and_missing_jobs_are_rows_with_status_and_error(incomplete_sweep):
    root, _, _ = incomplete_sweep
    res = load_jobs(root).results.set_index(["variant", "seed"])
    assert res.loc[("frozen", 1), "status"] == "failed"
    assert res.loc[("frozen", 1), "error"] == "RuntimeError: loss is NaN"
    assert math.isnan(res.loc[("frozen", 1), "fid"])      # a failure is never a measured value
    assert res.loc[("frozen", 2), "status"] == "missing"
    assert "no result.json" in res.loc[("frozen", 2), "error"]
    assert res.loc[("broken", 0), "status"] == "failed" and "unreadable" in res.loc[("broken", 0), "error"]
    assert res.loc[("broken", 1), "status"] == "missing"  # hole in the variant x seed grid


def test_summary_values_from_job_files(incomplete_sweep):
    root, values, res = incomplete_sweep
    summ = pd.read_csv(res["summary"]).set_index(["variant", "metric"])
    for variant in ("baseline", "no_norm"):
        for metric in HIB:
            xs = [values[(variant, s)][metric] for s in range(3)]
            row = summ.loc[(variant, metric)]
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(np.mean(xs), rel=1e-12)
            assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(
                stats.t.interval(0.95, 2, loc=np.mean(xs), scale=stats.sem(xs)), rel=1e-12)
            assert row["ci_method"] == "t-interval over seeds"
    frozen = summ.loc[("frozen", "fid")]
    assert frozen["n"] == 1 and frozen["ci_method"] == SINGLE_SEED_METHOD
    assert (frozen["ci_lo"], frozen["ci_hi"]) == pytest.approx((29.9, 30.1))
    assert summ.loc[("broken", "fid"), "n"] == 0 and math.isnan(summ.loc[("broken", "fid"), "mean"])
    assert not res["complete"]
    assert {(r["variant"], r["seed"], r["status"]) for r in res["incomplete"]} == {
        ("frozen", 1, "failed"), ("frozen", 2, "missing"), ("broken", 0, "failed"), ("broken", 1, "missing"),
        ("broken", 2, "missing")}


def test_baseline_is_the_marked_variant_and_listed_first(tmp_path):
    write_job(tmp_path, "a_variant", 0, metrics={"fid": 3.0})
    write_job(tmp_path, "ref", 0, metrics={"fid": 2.0}, baseline=True)
    jobs = load_jobs(tmp_path)
    assert jobs.baseline == "ref"
    assert list(jobs.results["variant"]) == ["ref", "a_variant"]


def test_empty_directory_is_an_error(tmp_path):
    from reports.__main__ import main
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)
    assert main([str(tmp_path)]) == 2


def _repro_rows():
    """Reviewer's repro: baseline FID 20, 20, 30 on seeds 0-2; B 21, 21.5 on seeds 0-1, seed 2 failed."""
    rows = [{"variant": "baseline", "seed": s, "status": "ok", "fid": x} for s, x in enumerate((20.0, 20.0, 30.0))]
    rows += [{"variant": "B", "seed": s, "status": "ok", "fid": x} for s, x in enumerate((21.0, 21.5))]
    rows += [{"variant": "B", "seed": 2, "status": "failed", "fid": float("nan")}]
    return rows


def test_best_is_decided_on_the_seeds_every_variant_completed():
    summ = summarize(pd.DataFrame(_repro_rows()), ["fid"], {"fid": False}, "baseline").set_index("variant")
    # plain means would make B best (21.25 < 23.33) although it is worse than the baseline on every shared seed
    assert summ.loc["B", "mean"] < summ.loc["baseline", "mean"]
    assert bool(summ.loc["baseline", "best"]) and not bool(summ.loc["B", "best"])
    assert (summ["best_n"] == 2).all() and (summ["full_n"] == 3).all()
    # higher-is-better: the same paired seeds decide (B beats the baseline on seeds 0 and 1)
    summ = summarize(pd.DataFrame(_repro_rows()), ["fid"], {"fid": True}, "baseline").set_index("variant")
    assert bool(summ.loc["B", "best"]) and not bool(summ.loc["baseline", "best"])


def test_best_needs_a_shared_seed_and_ignores_variants_without_results():
    rows = [{"variant": "a", "seed": 0, "status": "ok", "fid": 1.0}, {"variant": "b", "seed": 1, "status": "ok",
                                                                        "fid": 2.0},
            {"variant": "c", "seed": 0, "status": "failed", "fid": float("nan")}]
    summ = summarize(pd.DataFrame(rows), ["fid"], {"fid": False}, None)
    assert not summ["best"].any() and (summ["best_n"] == 0).all()   # a and b share no seed: nothing to compare
    rows[1]["seed"] = 0                                               # now they share seed 0; c (no result) is out
    summ = summarize(pd.DataFrame(rows), ["fid"], {"fid": False}, None).set_index("variant")
    assert bool(summ.loc["a", "best"]) and not summ.loc[["b", "c"], "best"].any()


def test_summary_refuses_two_jobs_for_one_variant_and_seed():
    rows = _repro_rows() + [{"variant": "B", "seed": 0, "status": "ok", "fid": 50.0}]
    with pytest.raises(ValueError, match=r"\('B', 0\)"):
        summarize(pd.DataFrame(rows), ["fid"], {"fid": False}, "baseline")


def test_best_repro_in_table_and_page(tmp_path):
    for s, x in enumerate((20.0, 20.0, 30.0)):
        write_job(tmp_path, "baseline", s, metrics={"fid": x}, baseline=True)
    for s, x in enumerate((21.0, 21.5)):
        write_job(tmp_path, "B", s, metrics={"fid": x})
    write_job(tmp_path, "B", 2, status="failed", error="RuntimeError: loss is NaN")
    res = build_report(tmp_path)
    tex = res["table"].read_text()
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    cells = {line.split("&")[0].strip(): line.split("&")[1].strip().removesuffix("\\\\").strip()
             for line in body.strip().splitlines()}
    assert cells["baseline"].startswith("\\bfseries") and "(n=" not in cells["baseline"]
    assert not cells["B"].startswith("\\bfseries") and cells["B"].endswith("(n=2)")
    assert "Bold: best mean over the seeds every variant with a result completed (paired" in tex
    assert "Bold: best mean;" not in tex
    assert "fewer shared seeds for fid (2 of 3)" in tex
    html = res["html"].read_text()
    assert re.search(r'<td class="best" title="n = 3; CI: t-interval over seeds">[^<]*</td>', html)
    assert re.search(r'<td class="" title="n = 2; CI: t-interval over seeds">[^<]*\(n=2\)</td>', html)
    assert "every variant with a result completed" in html


def _two_sweeps(parent):
    """outputs/sweeps/norms-like parent: two protocol sweeps with the same variants and seeds."""
    for protocol in ("inference", "finetune"):
        sweep = parent / f"tiny_sd-{protocol}-default"
        for v in ("baseline", "no_norm"):
            for s in (0, 1, 2):
                write_job(sweep, v, s, metrics={"fid": 20.0 + s + (v == "no_norm")}, baseline=v == "baseline",
                          protocol=protocol, samples=False)
    return parent


def test_parent_of_several_sweeps_is_refused_with_the_duplicated_jobs(tmp_path):
    from reports import JobsError
    from reports.__main__ import main

    parent = _two_sweeps(tmp_path / "norms")
    with pytest.raises(JobsError) as err:
        load_jobs(parent)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert ("variant 'baseline' seed 0 in tiny_sd-finetune-default/jobs/baseline__seed0, "
            "tiny_sd-inference-default/jobs/baseline__seed0") in msg
    assert "Point at one sweep directory" in msg and str(parent / "tiny_sd-finetune-default") in msg
    assert main([str(parent)]) == 2
    assert not (parent / "summary.csv").exists()                        # nothing pooled was written
    # each leaf sweep on its own is fine: n = 3 seeds, delta over 3 paired seeds
    jobs = load_jobs(parent / "tiny_sd-finetune-default")
    summ = summarize(jobs.results, jobs.metrics, jobs.higher_is_better, jobs.baseline).set_index("variant")
    assert (summ["n"] == 3).all() and summ.loc["no_norm", "delta_n"] == 3


def test_cli_prints_the_duplicate_error(tmp_path, capsys):
    from reports.__main__ import main

    parent = _two_sweeps(tmp_path / "norms")
    assert main([str(parent)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "more than one job for the same (variant, seed)" in err


def test_probe_runs_with_like_named_folders_are_not_duplicate_jobs(tmp_path):
    # probe result.json files are not job records (no "variant"); two runs may share a folder name
    for run in ("run1", "run2"):
        d = tmp_path / run / "attention"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"probe": "attention", "prompts": ["a red circle"]}))
    jobs = load_jobs(tmp_path)
    assert len(jobs.results) == 2
    res = build_report(tmp_path)                                        # the probe-run report still builds
    assert res["html"].is_file() and res["table"].is_file()


def test_a_metric_the_seeds_cannot_move_gets_the_job_bootstrap_not_a_zero_width_interval(tmp_path):
    """protocol=inference: the denoising loss is the same on every seed, so its t-interval (and its paired delta's)
    would be ± 0; the jobs' bootstrap over images is the honest uncertainty, and ci_method says which was used."""
    values = make_shapes_sweep(tmp_path, variants=("groupnorm", "layernorm"), seeds=(0, 1, 2))
    jobs = load_jobs(tmp_path)
    summ = summarize(jobs.results, jobs.metrics, jobs.higher_is_better, jobs.baseline, jobs.job_ci)
    summ = summ.set_index(["variant", "metric"])
    loss = summ.loc[("layernorm", "denoising_loss")]
    assert loss["sd"] == 0.0 and loss["ci_method"] == SEED_INVARIANT_METHOD
    assert (loss["ci_lo"], loss["ci_hi"]) == pytest.approx((0.056, 0.064))          # the job CI, not [0.06, 0.06]
    assert loss["delta"] == pytest.approx(0.01) and loss["delta_ci_method"] == QUADRATURE_METHOD
    half = math.hypot(0.004, 0.004)                                                  # both jobs' half-widths
    assert (loss["delta_ci_lo"], loss["delta_ci_hi"]) == pytest.approx((0.01 - half, 0.01 + half))
    assert bool(loss["delta_excludes_zero"])                                         # 0.01 > 0.0057: still real
    # a metric the seeds do move keeps the t-interval over seeds and the paired t-interval
    fd = summ.loc[("layernorm", "fd_evaluator")]
    xs = [values[("layernorm", s)]["fd_evaluator"] for s in range(3)]
    assert fd["ci_method"] == "t-interval over seeds" and fd["delta_ci_method"] == PAIRED_METHOD
    assert (fd["ci_lo"], fd["ci_hi"]) == pytest.approx(stats.t.interval(0.95, 2, loc=np.mean(xs),
                                                                        scale=stats.sem(xs)), rel=1e-12)
    # without job CIs there is nothing better to say than the zero-width interval, and it is labelled as such
    bare = summarize(jobs.results, jobs.metrics, jobs.higher_is_better, jobs.baseline, {})
    assert set(bare.loc[bare["metric"] == "denoising_loss", "ci_method"]) == {"t-interval over seeds"}
