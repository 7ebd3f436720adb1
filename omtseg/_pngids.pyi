# Type stub of the native extension built from omtseg/_native/ (design: omtseg/_native/module.c).
from typing import Any

# Any object with the buffer protocol (bytes, bytearray, memoryview, C-contiguous numpy arrays).
Buffer = Any

def unfilter_ids(
    data: Buffer, width: int, channels: int, prev: Buffer, out: Buffer, first_row: int
) -> int: ...
def unfilter_runs(
    data: Buffer,
    width: int,
    channels: int,
    prev: Buffer,
    first_row: int,
    row_begin: Buffer,
    row_end: Buffer,
    run_end: Buffer,
    run_id: Buffer,
    num_runs: int,
) -> int: ...
def pair_counts_runs(
    gt_runs: tuple[Buffer, Buffer, Buffer, Buffer],
    pred_runs: tuple[Buffer, Buffer, Buffer, Buffer],
    height: int,
    width: int,
) -> tuple[bytes, bytes] | None: ...
def load_zlib_ng(path: str) -> bool: ...
def inflate_ids(stream: Buffer, height: int, width: int, channels: int, out: Buffer) -> None: ...
def inflate_runs(
    stream: Buffer,
    height: int,
    width: int,
    channels: int,
    row_begin: Buffer,
    row_end: Buffer,
    run_end: Buffer,
    run_id: Buffer,
    whole: Buffer = ...,
) -> int: ...
