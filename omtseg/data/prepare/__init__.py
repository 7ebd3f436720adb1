"""Official downloads -> the zero-shot benchmark layouts (the command is ``omtseg prepare``, in
:mod:`omtseg.commands.prepare`).

One module per raw download (:mod:`.ade20k_150`, :mod:`.ade20k_847`, :mod:`.pascal_context`,
:mod:`.pascal_voc`); each documents its inputs and outputs. The commands resume: outputs are written
atomically and existing ones are kept, so re-running after an interruption finishes the job.
data/README.md lists the downloads and where each file goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from omtseg.data.benchmark_registry import SPLIT_DIRS, datasets_root
from omtseg.data.prepare._common import PrepareStats
from omtseg.data.prepare.ade20k_150 import prepare_ade20k_150
from omtseg.data.prepare.ade20k_847 import prepare_ade20k_847
from omtseg.data.prepare.pascal_context import prepare_pascal_context_59, prepare_pascal_context_459
from omtseg.data.prepare.pascal_voc import prepare_pascal_voc_20

Preparer = Callable[..., PrepareStats]

PREPARERS: dict[str, Preparer] = {
    "ade20k_150": prepare_ade20k_150,
    "ade20k_150_panoptic": prepare_ade20k_150,
    "ade20k_847": prepare_ade20k_847,
    "pascal_context_59": prepare_pascal_context_59,
    "pascal_context_459": prepare_pascal_context_459,
    "pascal_voc_20": prepare_pascal_voc_20,
}
"""Benchmark name -> prepare function ``f(src, dst, *, splits, overwrite, show_progress) -> PrepareStats``."""


def prepare(
    benchmark: str,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    splits: Sequence[str] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
) -> PrepareStats:
    """Convert the raw download(s) under ``src`` into ``benchmark``'s layout under ``dst``.

    Args:
        benchmark: a key of :data:`PREPARERS` (the names of
            :data:`~omtseg.data.benchmark_registry.BENCHMARKS`).
        src: folder holding the extracted download (e.g. the parent of ``ADEChallengeData2016``).
        dst: datasets root to write into (default ``$OMTSEG_DATASETS`` or ``data/``); may equal ``src``.
        splits: which of ``"train"``, ``"val"`` to prepare (zero-shot evaluation needs ``"val"`` only).
        overwrite: rewrite outputs that already exist.
        show_progress: draw progress bars.

    Raises:
        ValueError: unknown benchmark or split; malformed raw files.
        FileNotFoundError: a raw input is missing (the message names it and where to download it).
    """
    if benchmark not in PREPARERS:
        raise ValueError(f"No prepare command for {benchmark!r}; choose one of {sorted(PREPARERS)}.")
    unknown = [s for s in splits if s not in SPLIT_DIRS]
    if unknown or not splits:
        raise ValueError(f"Unknown splits {unknown or list(splits)}; use some of {sorted(SPLIT_DIRS)}.")
    if not Path(src).is_dir():
        raise FileNotFoundError(
            f"--src {src} is not a folder; give the folder holding the extracted download."
        )
    return PREPARERS[benchmark](
        Path(src), datasets_root(dst), splits=tuple(splits), overwrite=overwrite, show_progress=show_progress
    )


__all__ = ["PREPARERS", "PrepareStats", "prepare"]
