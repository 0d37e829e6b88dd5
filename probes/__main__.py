"""`python -m probes <attention|timestep|skips|attribution|evaluate> key=value ...` (Hydra).

Hydra has no positional subcommands, so the first argument (when it is not a `key=value` override)
is popped here and turned into the config-group choice `probe=<name>`.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

SUBCOMMANDS = ("attention", "timestep", "skips", "attribution", "evaluate")


def pop_subcommand(argv: list[str]) -> list[str]:
    """argv with a leading subcommand replaced by the override `probe=<name>`."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        name = argv[1]
        if name not in SUBCOMMANDS:
            raise SystemExit(f"unknown probe {name!r}; choose one of {', '.join(SUBCOMMANDS)}")
        return [argv[0], f"probe={name}", *argv[2:]]
    return argv


@hydra.main(version_base="1.3", config_path="../configs", config_name="probes")
def main(cfg: DictConfig) -> None:
    from .runner import run

    result = run(OmegaConf.to_container(cfg, resolve=True))
    print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=2, default=str))
    print(f"wrote {', '.join(result['files'])} to {cfg.out}")


if __name__ == "__main__":
    sys.argv = pop_subcommand(sys.argv)
    main()
