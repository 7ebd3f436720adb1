"""``omtseg prepare <benchmark> --src RAW [--dst ROOT]``: official downloads -> zero-shot benchmark layouts.

The conversions are :mod:`omtseg.data.prepare`'s (data/README.md lists the downloads and where each file
goes). Resumable: outputs are written atomically and existing ones are kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from omtseg.data.benchmark_registry import DATASETS_ENV, SPLIT_DIRS, datasets_root
from omtseg.data.prepare import PREPARERS, prepare


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg prepare``); returns the exit status.

    A missing or malformed download raises an error that says how to fix it; ``omtseg`` prints it in one
    line (exit status 2).
    """
    parser = argparse.ArgumentParser(
        prog="omtseg prepare",
        description="Convert an official dataset download into the layout omtseg's zero-shot benchmarks read "
        "(see data/README.md). Resumable: existing outputs are kept.",
    )
    parser.add_argument("benchmark", choices=sorted(PREPARERS))
    parser.add_argument("--src", required=True, help="folder holding the extracted download")
    parser.add_argument(
        "--dst", default=None, help=f"datasets root to write into (default ${DATASETS_ENV} or data/)"
    )
    parser.add_argument(
        "--splits", nargs="+", default=["train", "val"], choices=sorted(SPLIT_DIRS), help="splits to prepare"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    stats = prepare(
        args.benchmark,
        args.src,
        args.dst,
        splits=args.splits,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    print(f"{args.benchmark} -> {datasets_root(args.dst)}: {stats.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
