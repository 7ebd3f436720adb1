"""What the prepare commands share: the per-image loop, locating raw downloads, resumable atomic writes.

Every output file is written atomically (:func:`omtseg.io.atomic_path`), so a file that exists is complete:
a second run skips it, and an interrupted run resumes where it stopped. Output paths come from the benchmark
registry (:func:`output_paths`), the same declaration the datasets read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from rich.progress import track

from omtseg.data.benchmark_registry import benchmark_spec
from omtseg.io import atomic_path, save_image

T = TypeVar("T")


@dataclass
class PrepareStats:
    """What a prepare run did: files written, files already there (skipped), per output kind."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, wrote: bool) -> None:
        table = self.written if wrote else self.skipped
        table[kind] = table.get(kind, 0) + 1

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        kinds = sorted(set(self.written) | set(self.skipped))
        parts = [f"{k}: {self.written.get(k, 0)} written, {self.skipped.get(k, 0)} kept" for k in kinds]
        return "; ".join(parts) if parts else "nothing to do"


def find_raw(src: str | os.PathLike[str], name: str, required: Sequence[str], download: str) -> Path:
    """The raw download folder ``name``: ``src`` itself or ``src/name``, holding every ``required`` entry.

    Args:
        src: the folder the user gave (the download folder or its parent).
        name: the download's folder (``ADEChallengeData2016``, ``VOCdevkit/VOC2012``).
        required: entries (relative paths) the folder must hold.
        download: where users get the download, for the error message.

    Raises:
        FileNotFoundError: naming the missing entries and where to get them.
    """
    src = Path(src)
    # The user may point at the download's parent, at an intermediate folder (VOCdevkit) or at the folder.
    candidates = list(dict.fromkeys([src / name, src / Path(name).name, src]))
    for folder in candidates:
        if folder.is_dir() and all((folder / r).exists() for r in required):
            return folder
    base = next((c for c in candidates if c.is_dir() and c.name == Path(name).name), candidates[0])
    missing = [str(base / r) for r in required if not (base / r).exists()]
    raise FileNotFoundError(
        f"Raw download {name} not found under {src}: missing {', '.join(missing) or str(base)}. "
        f"Get it from {download} and extract it so that {src / name} holds {', '.join(required)}."
    )


def require(path: Path, what: str, download: str) -> Path:
    """``path`` if it exists, else a FileNotFoundError naming ``what`` and where to get it."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}. Get it from {download}.")
    return path


def read_split_list(path: Path) -> list[str]:
    """Image ids of a VOC ``ImageSets`` list (one per line)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def copy_file(src: Path, dst: Path, stats: PrepareStats, *, overwrite: bool, kind: str = "images") -> None:
    """Copy ``src`` to ``dst`` atomically, unless ``dst`` already exists (then count it as kept)."""
    if dst.exists() and not overwrite:
        stats.count(kind, wrote=False)
        return
    if not src.is_file():
        raise FileNotFoundError(f"Raw file not found: {src}; the download is incomplete, extract it again.")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    stats.count(kind, wrote=True)


def save_label(labels: np.ndarray, dst: Path, stats: PrepareStats, *, overwrite: bool, kind: str) -> None:
    """Write a label map atomically: uint8 -> 8-bit PNG, uint16 -> ``I;16`` TIFF; existing files are kept."""
    if dst.exists() and not overwrite:
        stats.count(kind, wrote=False)
        return
    assert labels.dtype in (np.uint8, np.uint16), labels.dtype
    save_image(labels, dst)
    stats.count(kind, wrote=True)


def is_done(paths: Iterable[Path], overwrite: bool) -> bool:
    """True when every path exists and overwriting was not asked for."""
    return not overwrite and all(p.exists() for p in paths)


def progress(items: Sequence[T], description: str, enabled: bool) -> Iterator[T]:
    """Iterate ``items`` with a rich progress bar on the terminal (none when ``enabled`` is False)."""
    yield from track(items, description=description, disable=not enabled, total=len(items))


def output_paths(benchmark: str, split: str, root: str | os.PathLike[str], stem: str) -> tuple[Path, Path]:
    """Where an image of ``benchmark`` and its label map go under ``root``, as the registry declares them.

    Args:
        benchmark: a name of :data:`~omtseg.data.benchmark_registry.BENCHMARKS`.
        split: ``"train"`` or ``"val"``.
        root: the datasets root written into.
        stem: the image's file name without suffix.

    Returns:
        ``(image .jpg, label map)`` paths.
    """
    spec = benchmark_spec(benchmark)
    return (
        spec.path(spec.images, split, root) / f"{stem}.jpg",
        spec.path(spec.labels, split, root) / f"{stem}{spec.label_suffix}",
    )


@dataclass(frozen=True)
class LabelledImage:
    """One image of a semantic benchmark to prepare.

    Attributes:
        image: where the image goes.
        label: where its label map goes.
        make: reads the raw files; returns the image (a raw file to copy as is, or an (H, W[, 3]) uint8 array
            to encode as JPEG with PIL's defaults) and the (H, W) uint8 or uint16 label map. Called only when
            an output is missing.
    """

    image: Path
    label: Path
    make: Callable[[], tuple[Path | np.ndarray, np.ndarray]]

    @classmethod
    def copied(cls, raw: Path, image: Path, label: Path, labels: Callable[[], np.ndarray]) -> LabelledImage:
        """An image copied as is from the ``raw`` file, with the label map ``labels()``."""
        return cls(image, label, partial(_raw_and_labels, raw, labels))


def _raw_and_labels(raw: Path, labels: Callable[[], np.ndarray]) -> tuple[Path, np.ndarray]:
    return raw, labels()


def write_labelled_images(
    items: Sequence[LabelledImage], description: str, *, overwrite: bool, show_progress: bool
) -> PrepareStats:
    """The prepare loop: each image and its label map are written unless both exist (so runs resume).

    Returns:
        What was written and kept, as ``images`` and ``labels``.
    """
    stats = PrepareStats()
    for item in progress(items, description, show_progress):
        if is_done([item.image, item.label], overwrite):
            stats.count("images", wrote=False)
            stats.count("labels", wrote=False)
            continue
        image, labels = item.make()
        if isinstance(image, Path):
            copy_file(image, item.image, stats, overwrite=overwrite)
        elif overwrite or not item.image.exists():
            with atomic_path(item.image) as tmp:
                Image.fromarray(image).save(tmp, format="JPEG")
            stats.count("images", wrote=True)
        else:
            stats.count("images", wrote=False)
        save_label(labels, item.label, stats, overwrite=overwrite, kind="labels")
    return stats
