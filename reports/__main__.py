"""``python -m reports DIR [--out OUT] [--title T]``: rebuild a sweep's (or probe run's) report from its files."""
from __future__ import annotations

import argparse
import sys

from .build import build_report
from .jobs import JobsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("dir", help="sweep directory (holding jobs/*/result.json) or a probe output directory")
    parser.add_argument("--out", default=None, help="where to write (default: DIR itself)")
    parser.add_argument("--title", default=None, help="page title (default: from the sweep name)")
    args = parser.parse_args(argv)
    try:
        res = build_report(args.dir, out_dir=args.out, title=args.title)
    except (FileNotFoundError, JobsError) as e:      # nothing to read, or not one sweep: the user's to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {res['html']}")
    print(f"table:  {res['table']}  summary: {res['summary']}  results: {res['results']}")
    print(f"figures: {len(res['figures'])} files in {res['html'].parent.parent / 'figures'}")
    if not res["complete"]:
        print(f"INCOMPLETE: {len(res['incomplete'])} of {res['n_jobs']} jobs failed or missing:")
        for r in res["incomplete"]:
            print(f"  {r['status']:8s} {r['variant']} seed {r['seed']}: {r['error']}")
    for w in res["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
