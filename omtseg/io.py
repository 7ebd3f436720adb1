"""File helpers shared by data and evaluation: panoptic PNG ids, image reading, atomic writes.

Imports nothing from the rest of the package (but its optional native extension), so every layer may use it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import types
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # built from omtseg/_native/*.c at install time; optional (no C compiler -> the PIL path below)
    from omtseg import _pngids
except ImportError:  # pragma: no cover - depends on the install
    _pngids = None  # type: ignore[assignment]
    warnings.warn(
        "omtseg's native extension omtseg._pngids is not built (was a C compiler missing at install?): "
        "panoptic PNGs are decoded with PIL, with the same results but ~10x slower PQ evaluation. "
        "Install a C compiler and reinstall omtseg (`make install`) to build it.",
        RuntimeWarning,
        stacklevel=2,
    )
_inflate: types.ModuleType
try:  # zlib-ng inflates the long-run streams of segment maps ~20x faster than the system zlib
    from zlib_ng import zlib_ng as _inflate
except ImportError:  # pragma: no cover - depends on the install
    _inflate = zlib

# The extension inflates natively when it can reach zlib-ng's C functions inside the zlib_ng module.
_NATIVE_INFLATE = bool(
    _pngids is not None and _inflate is not zlib and _pngids.load_zlib_ng(str(_inflate.__file__))
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
_PIECE_BYTES = 120 * 1024  # inflate this much at a time: below malloc's mmap threshold, reused from the heap


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic PNG colors to segment ids: ``id = R + 256 G + 256^2 B``. (H, W, 3) -> (H, W) int64."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`. (H, W) integer -> (H, W, 3) uint8."""
    if ids.dtype.kind not in "iu":
        ids = ids.astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("Panoptic segment ids must lie in [0, 256^3).")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    for c in range(3):  # in the ids' own integer type: an int32 map of a 4000 x 3000 photo is not widened
        out[..., c] = (ids >> (8 * c)) & 255
    return out


def read_image(path: str | os.PathLike[str], mode: str = "RGB", *, exif: bool = True) -> np.ndarray:
    """Read an image fully (so truncation is detected here), converted to ``mode``.

    Args:
        path: the file.
        mode: PIL mode to convert to ("" keeps the file's).
        exif: turn the picture upright as its EXIF orientation says (a phone photo is stored sideways
            with such a tag); False for label maps, whose pixels are the data.

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
            image: Image.Image = ImageOps.exif_transpose(opened) if exif else opened
            image = image.convert(mode) if mode else image
            return np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"Cannot read image {path}: {e}. The file is corrupt or truncated; re-download or re-extract it."
        ) from e


def read_checked(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file for a run that reports and skips bad files: ValueError with a short reason.

    Raises:
        ValueError: not found, a folder, empty, unreadable, not an image, or corrupt/truncated.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError("not found")
    if not path.is_file():
        raise ValueError("not a regular file")
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ValueError("unreadable (permission denied)")
    try:
        return read_image(path)
    except ValueError as e:
        if isinstance(e.__cause__, UnidentifiedImageError):
            raise ValueError("not an image (no image format recognised)") from None
        raise ValueError(f"corrupt or truncated image ({e.__cause__ or e})") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header only (fast: no pixel is decoded), upright as
    :func:`read_image` returns it (EXIF orientation applied).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}.")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if opened.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:  # read_image turns it upright
                width, height = height, width
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"Cannot read image {path}: {e}.") from e
    return height, width


def read_panoptic_png(path: str | os.PathLike[str]) -> np.ndarray:
    """A COCO-panoptic PNG as (H, W) int64 segment ids (0 = void)."""
    return read_panoptic_ids(path).astype(np.int64)


def read_panoptic_ids(path: str | os.PathLike[str]) -> np.ndarray:
    """A COCO-panoptic PNG as (H, W) uint32 segment ids ``R + 256 G + 256^2 B`` (0 = void; alpha ignored).

    8-bit RGB/RGBA PNGs without interlacing (what panopticapi, detectron2 and PIL write) are decoded by
    :func:`decode_panoptic_png`: zlib-ng inflates, the native extension undoes the row filters. Anything
    else (palette or 16-bit PNGs, no native extension, a damaged file) goes through PIL, which also
    produces the error for a corrupt file. Both give the same ids.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    ids = decode_panoptic_png(_read_file(path))
    return _pil_ids(path) if ids is None else ids


def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(
            f"Image file not found: {path}. Check the dataset root and file name."
        ) from None


def _pil_ids(path: str | os.PathLike[str]) -> np.ndarray:
    """The slow path: PIL decodes (and names the problem of a damaged file)."""
    return rgb2id(read_image(path, mode="RGB", exif=False)).astype(np.uint32)


class _Unreadable(Exception):
    """This PNG is not for the fast path (another kind, or damaged): read it with PIL instead."""


def _png_stream(data: bytes) -> tuple[int, int, int, bytes | memoryview]:
    """``(width, height, channels, zlib stream)`` of an 8-bit RGB/RGBA non-interlaced PNG with valid CRCs."""
    if not data.startswith(_PNG_SIGNATURE):
        raise _Unreadable
    view = memoryview(data)
    header, chunks, pos = None, [], len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise _Unreadable  # no IEND: truncated
        (length,) = struct.unpack_from(">I", data, pos)
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        if end > len(data):
            raise _Unreadable  # truncated
        if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _Unreadable  # damaged
        if kind == b"IHDR" and length == 13:
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            chunks.append(view[pos + 8 : end - 4])
        elif kind == b"IEND":
            break
        pos = end
    if header is None or not chunks:
        raise _Unreadable
    width, height, depth, color_type, compression, filter_method, interlace = header
    if depth != 8 or color_type not in (2, 6) or compression or filter_method or interlace:
        raise _Unreadable
    if not width or not height:
        raise _Unreadable
    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise _Unreadable  # a damaged or hostile header: PIL's decompression-bomb error names it
    return width, height, 3 if color_type == 2 else 4, chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _pieces(stream: bytes | memoryview, height: int, row_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(first row, whole rows of the inflated stream)``, a few dozen rows at a time.

    Inflating piece by piece means no buffer of the whole inflated image is ever allocated: on virtual
    machines the page faults of a fresh megabyte buffer per image cost several times the decoding itself.
    """
    rows_per_piece = max(1, _PIECE_BYTES // row_bytes)
    inflater = _inflate.decompressobj()
    pending = stream
    row = 0
    try:
        while row < height:
            want = min(rows_per_piece, height - row) * row_bytes
            piece = inflater.decompress(pending, want)
            pending = inflater.unconsumed_tail
            while len(piece) < want and pending:  # not expected from zlib, but cheap to allow
                piece += inflater.decompress(pending, want - len(piece))
                pending = inflater.unconsumed_tail
            if len(piece) != want:
                raise _Unreadable  # the stream ends early
            yield row, piece
            row += want // row_bytes
    except (zlib.error, _inflate.error) as e:
        raise _Unreadable from e


def decode_panoptic_png(data: bytes) -> np.ndarray | None:
    """Segment ids of an in-memory 8-bit RGB/RGBA non-interlaced PNG, or None where this fast path does not
    apply (another PNG kind, no native extension) or the data are damaged (bad chunk CRC, zlib error, short
    stream, unknown filter): callers then read the file with PIL, which raises a proper error.

    Returns:
        (H, W) uint32 ids ``R + 256 G + 256^2 B``.
    """
    if _pngids is None:
        return None
    try:
        width, height, channels, stream = _png_stream(data)
        ids = np.empty((height, width), dtype=np.uint32)
        if _NATIVE_INFLATE:
            _pngids.inflate_ids(stream, height, width, channels, ids)
        else:
            previous = bytearray(width * channels)
            for row, piece in _pieces(stream, height, width * channels + 1):
                _pngids.unfilter_ids(piece, width, channels, previous, ids, row)
    except (_Unreadable, ValueError):
        return None
    return ids


@dataclass
class PanopticRuns:
    """A segment map as runs of equal ids along its rows: what panoptic evaluation needs of a PNG.

    Row ``y`` is runs ``row_begin[y] .. row_end[y] - 1``; run ``k`` ends before column ``run_end[k]`` (it
    starts where the row's previous run ends, or at 0) and has id ``run_id[k]``. Rows may share runs (a
    row equal to the one above). Buffers may be longer than used, so they can be reused across images.

    Attributes:
        height, width: the map's size.
        row_begin, row_end: (>= H,) int32.
        run_end: (capacity,) int32.
        run_id: (capacity,) uint32 ids ``R + 256 G + 256^2 B``.
    """

    height: int
    width: int
    row_begin: np.ndarray
    row_end: np.ndarray
    run_end: np.ndarray
    run_id: np.ndarray
    # Room for a whole inflated image, kept for the next image decoded into these buffers.
    scratch: bytearray | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> PanopticRuns:
        """Runs of an (H, W) id map (values below 2^24)."""
        ids = np.ascontiguousarray(ids, dtype=np.uint32)
        h, w = ids.shape
        starts = np.ones((h, w), dtype=bool)
        starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        ends = np.ones((h, w), dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        counts = starts.sum(1, dtype=np.int32)
        row_end = np.cumsum(counts, dtype=np.int32)
        return cls(
            height=h,
            width=w,
            row_begin=row_end - counts,
            row_end=row_end,
            run_end=(np.flatnonzero(ends) % max(w, 1) + 1).astype(np.int32),
            run_id=ids[starts],
        )

    def to_ids(self) -> np.ndarray:
        """The (H, W) uint32 id map."""
        if self.height * self.width == 0:
            return np.zeros((self.height, self.width), dtype=np.uint32)
        bounds = zip(self.row_begin[: self.height], self.row_end[: self.height], strict=True)
        runs = [np.arange(b, e) for b, e in bounds]
        index = np.concatenate(runs)  # the runs of every row, in order
        first = np.zeros(index.size, dtype=bool)
        first[np.cumsum([0] + [r.size for r in runs[:-1]])] = True
        ends = self.run_end[index].astype(np.int64)
        lengths = ends - np.where(first, 0, np.roll(ends, 1))
        return np.repeat(self.run_id[index], lengths).reshape(self.height, self.width)


def read_panoptic_runs(path: str | os.PathLike[str], reuse: PanopticRuns | None = None) -> PanopticRuns:
    """A COCO-panoptic PNG as :class:`PanopticRuns` (see :func:`read_panoptic_ids` for the ids).

    The fast path (native extension, 8-bit RGB/RGBA PNG) decodes straight into runs without ever writing
    the dense map; other files are read with PIL and converted.

    Args:
        path: the PNG file.
        reuse: runs of an earlier image whose buffers may be overwritten (evaluation loops pass the
            previous result), or None.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image.
    """
    if _pngids is not None:
        try:
            width, height, channels, stream = _png_stream(_read_file(path))
            if reuse is None or reuse.row_begin.size < height or reuse.run_end.size < height * width:
                reuse = PanopticRuns(
                    height=height,
                    width=width,
                    row_begin=np.empty(height, dtype=np.int32),
                    row_end=np.empty(height, dtype=np.int32),
                    run_end=np.empty(height * width, dtype=np.int32),
                    run_id=np.empty(height * width, dtype=np.uint32),
                )
            reuse.height, reuse.width = height, width
            buffers = (reuse.row_begin, reuse.row_end, reuse.run_end, reuse.run_id)
            if _NATIVE_INFLATE:
                inflated = height * (width * channels + 1)
                if reuse.scratch is None or len(reuse.scratch) < inflated:
                    reuse.scratch = bytearray(inflated)
                _pngids.inflate_runs(stream, height, width, channels, *buffers, reuse.scratch)
                return reuse
            previous, num_runs = bytearray(width * channels), 0
            for row, piece in _pieces(stream, height, width * channels + 1):
                num_runs = _pngids.unfilter_runs(piece, width, channels, previous, row, *buffers, num_runs)
            return reuse
        except (_Unreadable, ValueError):
            pass
    return PanopticRuns.from_ids(_pil_ids(path))


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
