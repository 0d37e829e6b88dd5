"""`python -m probes <attention|timestep|skips|attribution|evaluate> key=value ...` (Hydra).

Hydra has no positional subcommands, so the first argument (when it is not a `key=value` override)
is popped here and turned into the config-group choice `probe=<name>`. Bad input of any kind is one line on
stderr and exit code 2 before any compute (`foundation.cli`, shared with `python -m ablations`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .preflight import PROBES as SUBCOMMANDS


CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def probe_options(name: str) -> set[str]:
    """The probe's own option names (its `configs/probe/<name>.yaml`) that are not run-wide keys of probes.yaml."""
    own = set(OmegaConf.load(CONFIGS / "probe" / f"{name}.yaml"))
    return own - set(OmegaConf.load(CONFIGS / "probes.yaml")) - {"name"}


def pop_subcommand(argv: list[str]) -> list[str]:
    """argv with a leading subcommand replaced by the override `probe=<name>`, and the probe's own options given
    bare (`word=red`) spelled as the config path Hydra knows (`probe.word=red`)."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        name = argv[1]
        if name not in SUBCOMMANDS:
            raise ValueError(f"unknown probe {name!r}; choose one of {', '.join(SUBCOMMANDS)}")
        own = probe_options(name)
        rest = [f"probe.{a}" if a.split("=", 1)[0] in own else a for a in argv[2:]]
        return [argv[0], f"probe={name}", *rest]
    return argv


@hydra.main(version_base="1.3", config_path="../configs", config_name="probes")
def main(cfg: DictConfig) -> None:
    from foundation.cli import refusing_bad_input

    from .preflight import check
    from .runner import load, run, summary

    with refusing_bad_input():  # every value, then the weights, then what depends on the model: before sampling
        plain = OmegaConf.to_container(cfg, resolve=True)
        pipe = check(plain, load)
    result = run(plain, pipe)
    print("\n".join(summary(result, cfg.out)))


def cli() -> None:
    from foundation.cli import refusing_bad_input, run_hydra_cli

    with refusing_bad_input():
        argv = pop_subcommand(sys.argv)
    run_hydra_cli(main, argv)


if __name__ == "__main__":
    cli()
