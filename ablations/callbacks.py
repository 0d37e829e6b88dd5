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

        check_or_exit(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.enabled:
            return
        from reports import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        log.info("building the report of %s", sweep_dir)
        build_report(sweep_dir)
        log.info("report: %s", sweep_dir / "report" / "index.html")
