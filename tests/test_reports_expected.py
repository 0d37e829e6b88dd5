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
