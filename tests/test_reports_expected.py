"""Jobs the sweep planned but that never started are reported as missing, by name."""

import json

import pandas as pd

from reports import build_report
from reports.testing import make_sweep


def test_planned_but_never_started_jobs_are_missing_rows(tmp_path):
    make_sweep(tmp_path, variants=("baseline", "no_norm"), seeds=(0, 1))
    planned = [{"variant": v, "seed": s} for v in ("baseline", "no_norm", "never_ran") for s in (0, 1)]
    (tmp_path / "expected_jobs.json").write_text(json.dumps({"jobs": planned}))
    res = build_report(tmp_path)
    table = pd.read_csv(res["results"])
    missing = table[table["status"] == "missing"]
    assert set(zip(missing["variant"], missing["seed"])) == {("never_ran", 0), ("never_ran", 1)}
    assert not res["complete"]
    assert "never_ran" in (tmp_path / "report" / "index.html").read_text()


def test_without_a_plan_the_grid_is_inferred(tmp_path):
    make_sweep(tmp_path, variants=("baseline", "no_norm"), seeds=(0, 1))
    table = pd.read_csv(build_report(tmp_path)["results"])
    assert set(table["status"]) == {"ok"} and len(table) == 4


def test_reference_floors_go_to_the_caption_not_the_columns(tmp_path, monkeypatch):
    import json as _json

    from reports import figures

    drawn = []
    real_bars = figures.metric_bars
    monkeypatch.setattr(figures, "metric_bars", lambda *a, **k: drawn.append(real_bars(*a, **k)) or drawn[-1])

    for v, fd in (("baseline", 10.0), ("no_norm", 14.0)):
        for s in (0, 1):
            d = tmp_path / "jobs" / f"{v}__seed{s}"
            d.mkdir(parents=True)
            _json.dump({"sweep": "norms", "variant": v, "baseline": v == "baseline", "protocol": "finetune", "seed": s,
                        "status": "ok", "error": None,
                        "metrics": {"fd": fd + s, "fd_floor": 3.0, "kid": 0.1, "kid_std": 0.01},
                        "higher_is_better": {"fd": False, "fd_floor": False, "kid": False, "kid_std": False},
                        "provenance": {"n": 32}}, (d / "result.json").open("w"))
    tex = build_report(tmp_path)["table"].read_text()
    header = next(line for line in tex.splitlines() if line.startswith("Variant"))
    assert "fd" in header and "floor" not in header and "std" not in header
    assert "Real-vs-real floor at the same N: fd 3." in tex
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert "fd_floor" in set(summary["metric"])  # still in the CSVs, where nothing is lost
    # nor panels of the metrics figure: a floor or a subset std is not a per-variant result
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles == ["fd ↓", "kid ↓"]
