"""`python -m forensics.demo [--out sample_runs] [--only name ...] [--if-missing]`: record the sample runs."""

import argparse
import sys

from forensics.demo.registry import TRAINERS, make_all


def main(argv=None) -> int:
    """`python -m forensics.demo`: record the sample runs; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m forensics.demo", description=__doc__)
    parser.add_argument("--out", default="sample_runs", help="folder to record into (default sample_runs)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(TRAINERS),
                        help="record only these runs")
    parser.add_argument("--if-missing", action="store_true", help="skip runs already recorded")
    args = parser.parse_args(argv)
    make_all(args.out, names=args.only, if_missing=args.if_missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
