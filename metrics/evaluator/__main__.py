"""`python -m metrics.evaluator --train` rebuilds the shipped evaluator weights; `--eval` (the default) prints their
held-out accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .model import SEED, WEIGHTS_DIR, load_evaluator
from .training import heldout_accuracy, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m metrics.evaluator",
                                 description="An independent evaluator for the shapes world: image features, "
                                             "image-text similarity, object attributes.")
    ap.add_argument("--train", action="store_true", help="rebuild the shipped evaluator weights")
    ap.add_argument("--eval", action="store_true", help="print held-out accuracy of the shipped weights")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: keep 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        rec = train({"seed": args.seed}, args.out)
        print(json.dumps({k: rec[k] for k in ("seed", "seconds", "heldout_accuracy", "n_parameters")}, indent=2))
    if args.eval or not args.train:
        print(json.dumps(heldout_accuracy(load_evaluator(path=args.out)), indent=2))


if __name__ == "__main__":
    main()
