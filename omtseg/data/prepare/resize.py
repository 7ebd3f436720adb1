"""OpenCV's ``cv2.resize`` sampling, in numpy, for the prepare commands that must write OpenCV's pixels.

The open-vocabulary projects' ``prepare_ade20k_full_sem_seg.py`` shrinks ADE20K-847 images with
``cv2.INTER_LINEAR`` and label maps with ``cv2.INTER_NEAREST``; published numbers were measured on those
files. PIL samples differently (its nearest reads ``floor((x + 0.5) * s)``, its bilinear filter widens with
the scale, i.e. antialiases), so this module restates OpenCV's rules without depending on OpenCV:

- nearest: destination ``x`` reads source ``min(floor(x * s), n - 1)`` with ``s = 1 / (dst / src)`` in double
  precision, as ``resizeNN`` computes it;
- linear, uint8: source coordinate ``(x + 0.5) * s - 0.5`` (half-pixel centres, no antialiasing), weights
  rounded to 11-bit fixed point (``round(w * 2048)``, each tap separately), an exact integer horizontal pass,
  and OpenCV's vertical fixed-point arithmetic: horizontal sums shifted right by 4, the high 16 bits of their
  products with the weights, then ``(x + 2) >> 2`` (not the exactly rounded ``>> 22``).

Measured equal, pixel for pixel, to opencv-python-headless 4.10.0.84 and 5.0.0.93 on 300 random sizes and
on ADE20K-like shrinks (tests/data/test_prepare_resize.py repeats the comparison when OpenCV is installed).
"""

from __future__ import annotations

import numpy as np

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS  # OpenCV's INTER_RESIZE_COEF_SCALE: weights in 1/2048


def shrunk_size(height: int, width: int, max_short: int) -> tuple[int, int] | None:
    """(H, W) with the short side ``max_short`` when it is longer, else None (the reference's rule).

    The long side is Python's ``round(long / short * max_short)``, as ``prepare_ade20k_full_sem_seg.py``
    computes it.
    """
    if min(height, width) <= max_short:
        return None
    if width >= height:
        return max_short, round(width / float(height) * max_short)
    return round(height / float(width) * max_short), max_short


def _nearest_index(src_len: int, dst_len: int) -> np.ndarray:
    inverse_scale = 1.0 / (dst_len / src_len)  # OpenCV keeps dst/src and inverts it: rounding as there
    index = np.floor(np.arange(dst_len, dtype=np.float64) * inverse_scale).astype(np.int64)
    return np.minimum(index, src_len - 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(array, (W, H), interpolation=cv2.INTER_NEAREST)`` for any dtype.

    Args:
        array: (H0, W0) or (H0, W0, C).
        size: (H, W) of the result.
    """
    rows = _nearest_index(array.shape[0], size[0])
    cols = _nearest_index(array.shape[1], size[1])
    return array[rows[:, None], cols[None, :]]


def _linear_taps(src_len: int, dst_len: int, *, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray]:
    """First source index (int64) and its fixed-point weights (2, dst_len) int64 per destination index.

    OpenCV computes the coordinate in double, rounds it to float, and takes floor and fraction in float;
    along x it moves taps that fall off an edge onto the edge pixel with weight (1, 0), along y it only
    clamps the rows it reads (``clamp_weights`` False).
    """
    scale = 1.0 / (dst_len / src_len)
    coord = ((np.arange(dst_len, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(coord).astype(np.int64)
    frac = (coord - first.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        below, above = first < 0, first >= src_len - 1
        frac[below | above] = 0.0
        first[below] = 0
        first[above] = src_len - 1
    one = np.float32(1.0)
    weights = np.stack(
        [np.rint((one - frac) * np.float32(COEF_SCALE)), np.rint(frac * np.float32(COEF_SCALE))]
    ).astype(np.int64)  # rint: round half to even, as cvRound
    return first, weights


def resize_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (W, H), interpolation=cv2.INTER_LINEAR)`` for uint8 images, bit for bit.

    Args:
        image: (H0, W0) or (H0, W0, C) uint8.
        size: (H, W) of the result.

    Returns:
        The resized image, uint8, with the input's channel layout.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"resize_linear reproduces OpenCV's uint8 arithmetic only; got {image.dtype}.")
    height, width = size
    src = image.astype(np.int64).reshape(image.shape[0], image.shape[1], -1)  # (H0, W0, C)
    x0, alpha = _linear_taps(image.shape[1], width, clamp_weights=True)
    x1 = np.minimum(x0 + 1, image.shape[1] - 1)
    horizontal = src[:, x0] * alpha[0][None, :, None] + src[:, x1] * alpha[1][None, :, None]  # (H0, W, C)
    y0, beta = _linear_taps(image.shape[0], height, clamp_weights=False)
    top = horizontal[np.clip(y0, 0, image.shape[0] - 1)].reshape(height, -1)  # (H, W * C)
    bottom = horizontal[np.clip(y0 + 1, 0, image.shape[0] - 1)].reshape(height, -1)
    b0, b1 = beta[0][:, None], beta[1][:, None]
    # 16-bit lanes: sums >> 4, high halves of the products, a rounding shift by the 2 bits left of 22.
    out = ((((top >> 4) * b0) >> 16) + (((bottom >> 4) * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8).reshape((height, width) + image.shape[2:])
