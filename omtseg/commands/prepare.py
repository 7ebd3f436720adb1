"""``omtseg prepare <benchmark> --src RAW [--dst ROOT]``: official downloads -> zero-shot benchmark layouts.

The conversions are :mod:`omtseg.data.prepare`'s; this module is the command's entry in the ``omtseg`` table.
"""

from __future__ import annotations

from collections.abc import Sequence

from omtseg.data.prepare import main as prepare_main


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg prepare``); returns the exit status."""
    return prepare_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
