"""OpenCV's resize sampling without OpenCV (ADE20K-847 prepare), checked three ways.

1. The rules as the issue states them, re-derived here: INTER_NEAREST reads source ``floor(x * src / dst)``;
   INTER_LINEAR on a shrink is bilinear with half-pixel centres and no antialiasing.
2. A golden file of OpenCV's own outputs (``tests/fixtures/opencv_resize/golden.npz``: uint8 images and
   int32 label maps, random with seed 15, resized by opencv-python-headless 4.10.0.84, whose output 5.0.0.93
   equals): equality to the last bit, including sizes where OpenCV's double-precision scale differs from
   exact integer arithmetic.
3. Real OpenCV on random sizes, when it is installed (it is not a dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omtseg.data.prepare.resize import resize_linear, resize_nearest, shrunk_size

GOLDEN = Path(__file__).parents[1] / "fixtures" / "opencv_resize" / "golden.npz"


def test_nearest_reads_floor_of_x_times_scale() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3000, (37, 61), dtype=np.int32)
    out = resize_nearest(labels, (16, 24))
    rows, cols = np.arange(16) * 37 // 16, np.arange(24) * 61 // 24  # exact for these sizes
    assert out.dtype == np.int32 and np.array_equal(out, labels[rows[:, None], cols[None, :]])
    # PIL's nearest (what prepare used before) reads floor((x + 0.5) * s): a different map.
    pil = np.asarray(Image.fromarray(labels).resize((24, 16), Image.Resampling.NEAREST))
    assert not np.array_equal(pil, out)


def _bilinear_half_pixel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float bilinear interpolation at ``(x + 0.5) * s - 0.5``, edge-clamped, no antialiasing."""

    def taps(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coord = np.clip((np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5, 0, n_src - 1)
        first = np.floor(coord).astype(int)
        return first, np.minimum(first + 1, n_src - 1), coord - first

    y0, y1, fy = taps(image.shape[0], size[0])
    x0, x1, fx = taps(image.shape[1], size[1])
    img = image.astype(np.float64)
    fx = fx[None, :, None]
    rows = img[:, x0] * (1 - fx) + img[:, x1] * fx
    return rows[y0] * (1 - fy[:, None, None]) + rows[y1] * fy[:, None, None]


def test_linear_is_half_pixel_bilinear_without_antialiasing() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)  # full of detail: antialiasing would blur it
    out = resize_linear(image, (25, 38))
    expected = _bilinear_half_pixel(image, (25, 38))
    assert out.shape == (25, 38, 3) and out.dtype == np.uint8
    assert np.abs(out - expected).max() <= 1.0  # fixed-point rounding only
    pil = np.asarray(Image.fromarray(image).resize((38, 25), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(pil - expected).max() > 20  # PIL's bilinear widens its filter on a shrink
    grey = resize_linear(image[..., 0], (25, 38))
    assert grey.shape == (25, 38) and np.array_equal(grey, out[..., 0])


def test_equal_to_opencv_golden_outputs() -> None:
    golden = np.load(GOLDEN)
    cases = sorted(int(k.split("_")[1]) for k in golden.files if k.startswith("image_"))
    assert len(cases) == 6
    for i in cases:
        linear, nearest = golden[f"linear_{i}"], golden[f"nearest_{i}"]
        assert np.array_equal(resize_linear(golden[f"image_{i}"], linear.shape[:2]), linear), i
        assert np.array_equal(resize_nearest(golden[f"labels_{i}"], nearest.shape), nearest), i


def test_equal_to_installed_opencv_on_random_sizes() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    for t in range(100):
        h0, w0 = int(rng.integers(8, 150)), int(rng.integers(8, 150))
        h, w = int(rng.integers(2, h0 + 1)), int(rng.integers(2, w0 + 1))
        shape = (h0, w0) if t % 2 else (h0, w0, 3)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = rng.integers(0, 3000, (h0, w0), dtype=np.int32)
        assert np.array_equal(
            resize_linear(image, (h, w)), cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        )
        assert np.array_equal(
            resize_nearest(labels, (h, w)), cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        )


def test_shrunk_size_follows_the_reference_rule() -> None:
    assert shrunk_size(512, 900, 512) is None and shrunk_size(300, 200, 512) is None
    assert shrunk_size(683, 1024, 512) == (512, 768)
    assert shrunk_size(1024, 1025, 512) == (512, 512)  # round(512.5) is 512: Python rounds half to even
    assert shrunk_size(2000, 600, 512) == (1707, 512)
    with pytest.raises(ValueError, match="uint8"):
        resize_linear(np.zeros((4, 4), dtype=np.float32), (2, 2))
