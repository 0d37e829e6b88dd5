"""What every command line of the toolkit does with bad input: one message on stderr, exit code 2, nothing computed.

Two kinds of bad input reach a CLI: a command line Hydra cannot compose (an unknown `sweep=`/`model=` choice, an
option the config does not have, a malformed override) and values the preflight rejects (a word outside tiny_sd's
vocabulary, a size the UNet cannot take, sample_steps=0, a missing checkpoint). `run_hydra_cli` turns the first into one
line and `refusing_bad_input` the second; errors raised later, during compute, are bugs and keep their traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

from omegaconf.errors import OmegaConfBaseException

NOTHING_COMPUTED = "Nothing was computed."


def refuse(message: str, code: int = 2):
    """Print `error: message` and exit with `code` (no traceback)."""
    print(f"error: {message}\n{NOTHING_COMPUTED}", file=sys.stderr)
    raise SystemExit(code)


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a preflight raises for input the user can fix: a missing checkpoint, a bad value (a
    CheckpointMismatchError is a ValueError), a config value that does not resolve."""
    from .loading import ModelNotFoundError  # imports torch: not before a command line is known to be good

    return ModelNotFoundError, ValueError, OmegaConfBaseException


@contextlib.contextmanager
def refusing_bad_input():
    """Run a preflight: an error of `bad_input_errors()` inside becomes one message and exit code 2."""
    try:
        yield
    except bad_input_errors() as e:
        refuse(str(e).strip())


def composition_message(e: BaseException) -> str:
    """One line for a Hydra composition error: unknown group choices list the available ones."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, choice = str(e.missing_cfg_file).rpartition("/")
        if group:
            return f"unknown {group}={choice!r}; available: {', '.join(sorted(e.options))}"
    cause = e.__cause__
    text = str(e).strip()
    if cause is not None and str(cause).strip():
        first = str(cause).strip().splitlines()[0]  # omegaconf's reason ("Key 'foo' is not in struct")
        if first not in text:
            text = f"{text} ({first})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def quiet_output() -> None:
    """A command line's output: no diffusers/transformers notices (fontTools' font-subsetting log is quieted where
    figures are saved, reports.style), and each warning once, as `warning: message` without the source line."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip()
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


def run_hydra_cli(main, argv: list[str] | None = None) -> None:
    """Call a `@hydra.main` function so that composition errors are one line and exit code 2.

    Hydra prints them itself and exits 1 unless HYDRA_FULL_ERROR is set, when it raises them instead; we set it
    for the call and report the composition errors ourselves. Anything else raised propagates unchanged.
    """
    from hydra.errors import ConfigCompositionException, OverrideParseException

    if argv is not None:
        sys.argv = argv
    quiet_output()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (ConfigCompositionException, OverrideParseException) as e:
        refuse(composition_message(e))
