"""The panoptic PNG fast path (native unfiltering, row runs) against PIL, on PNGs this test encodes itself."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import omtseg.io as io
from omtseg.evaluation import pq
from omtseg.io import (
    PanopticRuns,
    decode_panoptic_png,
    id2rgb,
    image_size,
    read_image,
    read_panoptic_ids,
    read_panoptic_runs,
)


def _pil_ids(path: Path) -> np.ndarray:
    """The reference: PIL's decoding, R + 256 G + 256^2 B."""
    rgb = read_image(path, mode="RGB").astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _filter_row(row: np.ndarray, prev: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """PNG filter ``kind`` (spec section 9.2) applied to one row of bytes, written out plainly."""
    x, b = row.astype(np.int64), prev.astype(np.int64)
    a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
    if kind == 0:
        predictor = np.zeros_like(x)
    elif kind == 1:
        predictor = a
    elif kind == 2:
        predictor = b
    elif kind == 3:
        predictor = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - predictor) % 256).astype(np.uint8)


def _chunk(kind: bytes, payload: bytes, *, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _encode_png(
    pixels: np.ndarray,
    filters: list[int],
    *,
    idat_pieces: int = 1,
    bad_filter_row: int | None = None,
    edit_stream=None,
) -> bytes:
    """A PNG of (H, W, 3 or 4) uint8 pixels with the given filter type per row, split into IDAT chunks."""
    h, w, channels = pixels.shape
    rows, prev = [], np.zeros(w * channels, np.uint8)
    for y in range(h):
        row = pixels[y].reshape(-1)
        kind = filters[y]
        rows.append(
            bytes([5 if y == bad_filter_row else kind]) + _filter_row(row, prev, channels, kind).tobytes()
        )
        prev = row
    stream = zlib.compress(b"".join(rows), 6)
    stream = stream if edit_stream is None else edit_stream(stream)  # chunk CRCs stay valid
    step = -(-len(stream) // idat_pieces)
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 6, 0, 0, 0)
    idats = b"".join(_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + idats + _chunk(b"IEND", b"")


def _segment_map(rng: np.random.Generator, h: int, w: int, num_segments: int) -> np.ndarray:
    """(H, W) random 24-bit ids on Voronoi cells: piecewise constant like real panoptic maps."""
    centers = rng.uniform((0, 0), (h, w), size=(num_segments, 2))
    ys, xs = np.mgrid[0:h, 0:w]
    cells = ((ys[..., None] - centers[:, 0]) ** 2 + (xs[..., None] - centers[:, 1]) ** 2).argmin(-1)
    ids = rng.choice(np.arange(256**3), size=num_segments, replace=False)
    return ids[cells]


@pytest.fixture(params=["native_inflate", "python_inflate"], autouse=True)
def inflate_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with zlib-ng called from C (whole images) and from Python (pieces)."""
    if request.param == "python_inflate":
        monkeypatch.setattr(io, "_NATIVE_INFLATE", False)
    return request.param


def test_native_extension_is_built(inflate_path: str) -> None:
    # `make install` builds it; without it every read silently takes the (slow) PIL path.
    assert io._pngids is not None and pq._pngids is not None
    assert io._NATIVE_INFLATE == (inflate_path == "native_inflate")  # zlib-ng found in the zlib_ng module


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("content", ["noise", "segments"])
def test_every_filter_type_decodes_as_pil_does(tmp_path: Path, channels: int, content: str) -> None:
    rng = np.random.default_rng(channels)
    h, w = 37, 23
    if content == "noise":
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    else:
        rgb = id2rgb(_segment_map(rng, h, w, 6))
        alpha = np.full((h, w, 1), 255, np.uint8)
        pixels = rgb if channels == 3 else np.concatenate([rgb, alpha], axis=-1)
    filters = [int(k) for k in rng.integers(0, 5, size=h)]
    filters[:5] = [0, 1, 2, 3, 4]  # each type at least once, row 0 included
    path = tmp_path / "image.png"
    path.write_bytes(_encode_png(pixels, filters, idat_pieces=3))
    expected = _pil_ids(path)
    assert decode_panoptic_png(path.read_bytes()) is not None  # the fast path, not the fallback
    assert np.array_equal(read_panoptic_ids(path), expected)
    assert np.array_equal(read_panoptic_runs(path).to_ids(), expected)


@pytest.mark.parametrize("piece_bytes", [1, 200, 120 * 1024])
def test_pil_written_segment_maps_in_any_piece_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece_bytes: int
) -> None:
    # PIL chooses filters adaptively per row (Paeth at edges, Up elsewhere), as in real datasets.
    monkeypatch.setattr(io, "_PIECE_BYTES", piece_bytes)
    rng = np.random.default_rng(piece_bytes)
    for k, (h, w) in enumerate([(1, 1), (1, 40), (40, 1), (64, 97), (131, 64)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(id2rgb(_segment_map(rng, h, w, 9))).save(path)
        expected = _pil_ids(path)
        assert np.array_equal(read_panoptic_ids(path), expected)
        runs = read_panoptic_runs(path)
        assert runs.shape == (h, w) and np.array_equal(runs.to_ids(), expected)


def test_buffers_are_reused_across_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = [_segment_map(rng, h, w, 5) for h, w in [(30, 40), (30, 40), (50, 20), (10, 10), (60, 60)]]
    runs = None
    for k, expected in enumerate(maps):
        path = tmp_path / f"{k}.png"
        Image.fromarray(id2rgb(expected)).save(path)
        runs = read_panoptic_runs(path, runs)
        assert np.array_equal(runs.to_ids(), expected) and np.array_equal(read_panoptic_ids(path), expected)


def test_other_png_kinds_take_the_pil_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = _segment_map(rng, 20, 30, 4) % 200  # small ids: R channel only
    for mode in ("P", "L", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        image = Image.fromarray(ids.astype(np.uint16)) if mode == "I;16" else Image.fromarray(id2rgb(ids))
        image.convert(mode).save(path)
        assert decode_panoptic_png(path.read_bytes()) is None
        expected = _pil_ids(path)
        assert np.array_equal(read_panoptic_ids(path), expected)
        assert np.array_equal(read_panoptic_runs(path).to_ids(), expected)


def test_damaged_files_fall_back_to_pil_errors(tmp_path: Path) -> None:
    pixels = id2rgb(_segment_map(np.random.default_rng(2), 16, 16, 3))
    good = _encode_png(pixels, [4] * 16)
    header_end = 8 + 25
    bad_crc = bytearray(good)
    bad_crc[header_end + 10] ^= 0xFF  # a byte of the IDAT data: its CRC no longer matches
    damaged = {
        "crc": bytes(bad_crc),
        "truncated": good[: len(good) // 2],
        "filter": _encode_png(pixels, [4] * 16, bad_filter_row=7),
        "not_png": b"\x00" * 64,
        "zlib": _encode_png(pixels, [4] * 16, edit_stream=lambda z: z[:20] + bytes([z[20] ^ 0x55]) + z[21:]),
        "short": _encode_png(
            pixels, [4] * 16, edit_stream=lambda z: zlib.compress(zlib.decompress(z)[:-100])
        ),
    }
    for name, data in damaged.items():
        assert decode_panoptic_png(data) is None, name
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        for read in (read_panoptic_ids, read_panoptic_runs):
            with pytest.raises(ValueError, match=f"{name}.png.*corrupt or truncated"):
                read(path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_panoptic_runs(tmp_path / "missing.png")


def test_runs_share_rows_and_round_trip() -> None:
    ids = np.array([[1, 1, 2, 2, 2], [1, 1, 2, 2, 2], [3, 3, 3, 3, 3]], dtype=np.uint32)
    runs = PanopticRuns.from_ids(ids)
    assert runs.row_end.tolist() == [2, 4, 5] and runs.run_end.tolist() == [2, 5, 2, 5, 5]
    assert np.array_equal(runs.to_ids(), ids)
    empty = PanopticRuns.from_ids(np.zeros((0, 4), np.uint32))
    assert empty.shape == (0, 4) and empty.to_ids().shape == (0, 4)


def test_native_pair_counts_equal_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        gt = _segment_map(rng, h, w, int(rng.integers(1, 8)))
        pred = np.roll(_segment_map(rng, h, w, int(rng.integers(1, 8))), int(rng.integers(0, 5)), axis=0)
        if trial % 3 == 0:
            gt[: h // 2] = gt[0]  # repeated rows
        expected = pq._pair_counts(gt.astype(np.int64), pred.astype(np.int64))  # numpy path
        gt_path, pred_path = tmp_path / f"gt{trial}.png", tmp_path / f"pred{trial}.png"
        Image.fromarray(id2rgb(gt)).save(gt_path)
        Image.fromarray(id2rgb(pred)).save(pred_path)
        runs = pq._pair_counts(read_panoptic_runs(gt_path), read_panoptic_runs(pred_path))  # native runs
        mixed = pq._pair_counts(PanopticRuns.from_ids(gt), pred.astype(np.int64))
        for got in (runs, mixed):
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_pair_counts_of_many_segments_fall_back_to_numpy(tmp_path: Path) -> None:
    # Over 2^20 (gt, pred) label combinations the native grid declines; the counts come from numpy.
    rng = np.random.default_rng(5)
    gt = rng.choice(np.arange(1, 256**3), size=(40, 60), replace=False)  # 2400 distinct ids
    pred = np.roll(rng.choice(np.arange(1, 256**3), size=(40, 60), replace=False), 1, axis=1)
    expected = pq._pair_counts(gt.astype(np.int64), pred.astype(np.int64))
    gt_runs, pred_runs = PanopticRuns.from_ids(gt), PanopticRuns.from_ids(pred)
    native = (gt_runs.row_begin, gt_runs.row_end, gt_runs.run_end, gt_runs.run_id)
    assert pq._pngids.pair_counts_runs(native, native, 40, 60) is None  # 2400 x 2400 labels
    got = pq._pair_counts(gt_runs, pred_runs)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_native_functions_reject_inconsistent_buffers() -> None:
    from omtseg import _pngids

    with pytest.raises(ValueError, match="whole rows"):
        _pngids.unfilter_ids(b"\x00" * 11, 3, 3, bytearray(9), np.zeros(3, np.uint32), 0)
    with pytest.raises(ValueError, match="too small"):
        _pngids.unfilter_ids(b"\x00" * 10, 3, 3, bytearray(9), np.zeros(2, np.uint32), 0)
    with pytest.raises(ValueError, match="3 or 4 channels"):
        _pngids.unfilter_ids(b"\x00" * 4, 3, 1, bytearray(3), np.zeros(3, np.uint32), 0)
    runs = PanopticRuns.from_ids(np.array([[1, 2]], np.uint32))
    args = (runs.row_begin, runs.row_end, runs.run_end, runs.run_id)
    with pytest.raises(ValueError, match="wrong size"):
        _pngids.unfilter_runs(b"\x00" * 7, 2, 3, bytearray(6), 0, *args[:3], np.zeros(1, np.uint32), 0)
    broken = (runs.row_begin, runs.row_end, np.array([1, 1], np.int32), runs.run_id)
    with pytest.raises(ValueError, match="do not cover each row"):
        _pngids.pair_counts_runs(broken, args, 1, 2)


def test_without_the_extension_results_are_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    gt, pred = _segment_map(rng, 30, 50, 6), _segment_map(rng, 30, 50, 7)
    Image.fromarray(id2rgb(gt)).save(tmp_path / "gt.png")
    Image.fromarray(id2rgb(pred)).save(tmp_path / "pred.png")
    native = pq._pair_counts(
        read_panoptic_runs(tmp_path / "gt.png"), read_panoptic_runs(tmp_path / "pred.png")
    )
    monkeypatch.setattr(io, "_pngids", None)
    monkeypatch.setattr(pq, "_pngids", None)
    assert decode_panoptic_png((tmp_path / "gt.png").read_bytes()) is None
    fallback = pq._pair_counts(
        read_panoptic_runs(tmp_path / "gt.png"), read_panoptic_runs(tmp_path / "pred.png")
    )
    assert np.array_equal(native[0], fallback[0]) and np.array_equal(native[1], fallback[1])


def test_damaged_bytes_never_crash(tmp_path: Path) -> None:
    # Random damage behind valid chunk CRCs reaches inflate, the filters and the run buffers: every read must
    # end in ids of the declared size or in the clear ValueError, never in a crash or a wrong-size result.
    rng = np.random.default_rng(6)
    pixels = id2rgb(_segment_map(rng, 24, 31, 5))
    filters = [int(k) for k in rng.integers(0, 5, size=24)]
    good = _encode_png(pixels, filters)
    outcomes = {"ids": 0, "error": 0}
    idat_start = 8 + 25 + 8
    idat_len = struct.unpack(">I", good[8 + 25 : 8 + 29])[0]
    for trial in range(300):
        data = bytearray(good)
        kind = trial % 3
        if kind == 0:  # flip bytes of the zlib stream
            for pos in rng.integers(idat_start, idat_start + idat_len, size=int(rng.integers(1, 4))):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # replace the stream with a valid one of other content (wrong filters, sizes)
            raw = rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
            data = bytearray(good[: 8 + 25] + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
        else:  # another declared size
            h, w = int(rng.integers(1, 60)), int(rng.integers(1, 60))
            header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
            data = bytearray(good[:8] + _chunk(b"IHDR", header) + good[8 + 25 :])
        if kind == 0:
            data[idat_start + idat_len : idat_start + idat_len + 4] = struct.pack(
                ">I", zlib.crc32(bytes(data[idat_start - 4 : idat_start + idat_len]))
            )
        path = tmp_path / f"{trial}.png"
        path.write_bytes(bytes(data))
        declared = struct.unpack(">II", bytes(data[16:24]))
        for read in (read_panoptic_ids, lambda p: read_panoptic_runs(p).to_ids()):
            try:
                ids = read(path)
            except ValueError as e:
                assert "corrupt or truncated" in str(e)
                outcomes["error"] += 1
            else:
                assert ids.shape == (declared[1], declared[0])
                outcomes["ids"] += 1
    assert min(outcomes.values()) >= 10, outcomes  # both ends were exercised


def test_huge_declared_size_is_refused_without_allocating(tmp_path: Path) -> None:
    pixels = id2rgb(np.zeros((4, 4), np.int64))
    good = _encode_png(pixels, [0] * 4)
    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(good[:8] + _chunk(b"IHDR", header) + good[8 + 25 :])
    assert decode_panoptic_png(path.read_bytes()) is None
    for read in (read_panoptic_ids, read_panoptic_runs):
        with pytest.raises(ValueError, match="bomb.png"):
            read(path)


def test_images_are_read_upright_as_their_exif_orientation_says(tmp_path: Path) -> None:
    picture = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    picture[:, :20] = 255  # the left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: the stored pixels are turned 90 degrees
    Image.fromarray(picture).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3) and image_size(tmp_path / "phone.jpg") == (40, 20)
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50  # the white half is now on top
    assert read_image(tmp_path / "phone.jpg", exif=False).shape == (20, 40, 3)  # label maps: as stored
