"""Hydra callback: check the sweep before it starts; build its report once every job has returned.

Jobs never raise (failures are written to their result.json), so `on_multirun_end` always runs; the report
reads only the job files, so it also works after a resumed or partially failed sweep, and can be rebuilt
with `python -m reports DIR`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .distributed import world
from .preflight import check_or_exit, planned_jobs

log = logging.getLogger(__name__)


class BuildReport(Callback):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_or_exit(config)
        if world()[0] == 0:  # a distributed sweep: rank 0 writes the sweep's files
            write_expected_jobs(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled or world()[0] != 0:
            return
        from reports import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        log.info("building the report of %s", sweep_dir)
        build_report(sweep_dir)
        log.info("report: %s", sweep_dir / "report" / "index.html")


def write_expected_jobs(config: DictConfig) -> None:
    """Record the planned jobs, so a report can name jobs that never started (not only those that crashed)."""
    try:
        jobs = planned_jobs(config)
    except Exception as e:  # noqa: BLE001 - another sweeper's syntax: the report falls back to the grid it sees
        log.warning("could not list the planned jobs (%s); missing jobs are inferred from the job folders", e)
        return
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "expected_jobs.json").write_text(json.dumps({"jobs": jobs}, indent=1))
