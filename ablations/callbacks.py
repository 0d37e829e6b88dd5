"""Hydra callback: check the sweep before it starts; build its report once every job has returned.

Jobs never raise (failures are written to their result.json), so `on_multirun_end` always runs; the report
reads only the job files, so it also works after a resumed or partially failed sweep, and can be rebuilt
with `python -m reports DIR`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class BuildReport(Callback):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from .preflight import check_or_exit

        from .distributed import world

        check_or_exit(config)
        if world()[0] == 0:  # a distributed sweep: rank 0 writes the sweep's files
            write_expected_jobs(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .distributed import world

        if not self.enabled or world()[0] != 0:
            return
        from reports import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        log.info("building the report of %s", sweep_dir)
        build_report(sweep_dir)
        log.info("report: %s", sweep_dir / "report" / "index.html")


def planned_jobs(config: DictConfig) -> list[dict]:
    """The (variant, seed) grid the basic sweeper will launch: sweep-file params, then command-line overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    params += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(params)
    jobs = []
    for batch in BasicSweeper.split_arguments(overrides, None)[0]:
        kv = dict(o.split("=", 1) for o in batch)
        jobs.append({"variant": kv.get("variant", config.get("variant")), "seed": int(kv.get("seed", config.seed))})
    return jobs


def write_expected_jobs(config: DictConfig) -> None:
    """Record the planned jobs, so a report can name jobs that never started (not only those that crashed)."""
    import json

    try:
        jobs = planned_jobs(config)
    except Exception as e:  # noqa: BLE001 - another sweeper's syntax: the report falls back to the grid it sees
        log.warning("could not list the planned jobs (%s); missing jobs are inferred from the job folders", e)
        return
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "expected_jobs.json").write_text(json.dumps({"jobs": jobs}, indent=1))
