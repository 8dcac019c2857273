"""`python -m bench --short` (about 2-3 minutes) or `--full`; see bench/RESULTS.md."""

from __future__ import annotations

import argparse
import sys

from .runner import FULL, SHORT, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", action="store_true", help="the short run (default)")
    group.add_argument("--full", action="store_true", help="2,000 blocks, more samples")
    parser.add_argument("--no-write", action="store_true",
                        help="print the table only; leave bench/RESULTS.md alone")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a figure misses its target")
    args = parser.parse_args(argv)
    code = run(FULL if args.full else SHORT, write=not args.no_write)
    return code if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
