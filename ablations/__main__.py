"""`python -m ablations [sweep=norms|skips|depth|blocks|freeu|seeds] [budget=smoke|default|paper] [...]`.

A thin Hydra entry point over the pure `ablations.job.run(cfg, out_dir)`. Everything else is configuration
(configs/config.yaml and its groups); `--help`, `--cfg job` and `-m` work as in any Hydra app.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# A sweep file lists its variants once: `hydra.sweeper.params.variant: ${variant_names:${variants}}`.
OmegaConf.register_new_resolver("variant_names", lambda variants: ",".join(map(str, variants)), replace=True)


@hydra.main(version_base="1.3", config_path="pkg://configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    import torch

    from .job import run
    from .preflight import check_or_exit

    if HydraConfig.get().mode.name != "MULTIRUN":  # a sweep checks once, in the callback's on_multirun_start
        check_or_exit(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # version_base >= 1.2 does not chdir: Hydra's output dir is passed explicitly.
    return run(cfg, HydraConfig.get().runtime.output_dir)


def cli() -> None:
    from foundation.cli import run_hydra_cli

    run_hydra_cli(main)  # an unknown sweep=/model= or option: one line, exit 2


if __name__ == "__main__":
    cli()
