"""File helpers shared by data and evaluation: panoptic PNG ids, image reading, atomic writes.

Imports nothing from the rest of the package, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic PNG colors to segment ids: ``id = R + 256 G + 256^2 B``. (H, W, 3) -> (H, W) int64."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`. (H, W) integer -> (H, W, 3) uint8."""
    ids = ids.astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("Panoptic segment ids must lie in [0, 256^3).")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    for c in range(3):
        out[..., c] = ids % 256
        ids = ids // 256
    return out


def read_image(path: str | os.PathLike[str], mode: str = "RGB") -> np.ndarray:
    """Read an image fully (so truncation is detected here), converted to ``mode``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image (corrupt or truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}. Check the dataset root and file name.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image: Image.Image = opened.convert(mode) if mode else opened
            return np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(
            f"Cannot read image {path}: {e}. The file is corrupt or truncated; re-download or re-extract it."
        ) from e


def read_panoptic_png(path: str | os.PathLike[str]) -> np.ndarray:
    """A COCO-panoptic PNG as (H, W) int64 segment ids (0 = void)."""
    return rgb2id(read_image(path, mode="RGB"))


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted write leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_image(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an image atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=Image.registered_extensions().get(path.suffix.lower()))


def save_json(obj: Any, path: str | os.PathLike[str], indent: int | None = None) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def load_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. Check the path (and the datasets root).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); the file is damaged, replace it.") from e
