"""Overlay pictures and line plots: sizes, colors where segments are, names drawn, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omtseg.types import IGNORE_INDEX, PanopticSegment, Vocabulary
from omtseg.visualize import line_plot, overlay_panoptic, overlay_regions, overlay_semantic

VOCAB = Vocabulary(
    names=("cat", "grass"),
    synonyms=(("cat",), ("grass",)),
    is_thing=(True, False),
    category_ids=(1, 2),
    colors=((255, 0, 0), (0, 0, 255)),
)


def _scene(h: int = 37, w: int = 53) -> tuple[np.ndarray, np.ndarray, list[PanopticSegment]]:
    image = np.full((h, w, 3), 100, dtype=np.uint8)
    ids = np.zeros((h, w), dtype=np.int32)
    ids[h // 2 :, :] = 3  # grass, bottom half
    ids[2:10, 2:12] = 1  # cat 1
    ids[2:10, 30:45] = 2  # cat 2
    segs = [
        PanopticSegment(id=1, label=0, is_thing=True, score=0.9, area=int((ids == 1).sum())),
        PanopticSegment(id=2, label=0, is_thing=True, score=0.8, area=int((ids == 2).sum())),
        PanopticSegment(id=3, label=1, is_thing=False, score=0.7, area=int((ids == 3).sum())),
    ]
    return image, ids, segs


def test_panoptic_overlay_colors_segments_and_leaves_void() -> None:
    image, ids, segs = _scene()
    out = overlay_panoptic(image, torch.from_numpy(ids), segs, VOCAB, alpha=1.0, labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[0, 20] == 100).all()  # void stays the image
    assert tuple(out[5, 5]) == (255, 0, 0)  # first cat: its class color
    assert tuple(out[5, 35]) != (255, 0, 0) and out[5, 35, 0] > out[5, 35, 2]  # second cat: a shade of red
    assert tuple(out[30, 20]) == (0, 0, 255)


def test_panoptic_overlay_writes_names() -> None:
    image, ids, segs = _scene(64, 96)
    plain = overlay_panoptic(image, ids, segs, VOCAB, labels=False)
    named = overlay_panoptic(image, ids, segs, VOCAB, labels=True)
    changed = (plain != named).any(-1)
    assert changed[ids == 3].sum() > 20  # a label drawn on the grass
    assert changed[ids == 1].sum() > 5


def test_semantic_overlay_and_ignore() -> None:
    image = np.zeros((9, 7, 3), dtype=np.uint8)
    sem = np.full((9, 7), IGNORE_INDEX)
    sem[:4] = 1
    out = overlay_semantic(image, sem, VOCAB, alpha=0.5, labels=False)
    assert (out[8] == 0).all()
    assert tuple(out[1, 1]) == (0, 0, 128)


def test_empty_segmentation_returns_the_image() -> None:
    image = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    out = overlay_panoptic(image, np.zeros((5, 6), dtype=np.int32), [], VOCAB)
    np.testing.assert_array_equal(out, image)


def test_size_mismatch_and_bad_class_raise() -> None:
    image, ids, segs = _scene()
    with pytest.raises(ValueError, match="differs"):
        overlay_panoptic(image[:-1], ids, segs, VOCAB)
    with pytest.raises(ValueError, match="outside"):
        overlay_semantic(image, np.full(ids.shape, 5), VOCAB)


def test_line_plot_draws_series() -> None:
    empty = line_plot({}, title="PQ", size=(200, 120))
    out = line_plot({"val/pq": [(0, 10.0), (1, 30.0), (2, 55.0)]}, title="PQ", size=(200, 120))
    assert out.shape == (120, 200, 3)
    assert (out != empty).any(-1).sum() > 50
    one = line_plot({"a": [(3, 1.0)]}, size=(100, 80))  # a single point still plots
    assert one.shape == (80, 100, 3)


def test_panoptic_overlay_writes_captions_under_names() -> None:
    image, ids, segs = _scene(96, 128)
    named = overlay_panoptic(image, ids, segs, VOCAB)
    segs[2].caption = "green grass at the bottom of a very long caption that must wrap"
    captioned = overlay_panoptic(image, ids, segs, VOCAB)
    assert (captioned != named).any(-1).sum() > 100  # the caption lines are drawn
    np.testing.assert_array_equal(overlay_panoptic(image, ids, segs, VOCAB, captions=False), named)
    np.testing.assert_array_equal(overlay_panoptic(image, ids, segs, VOCAB, labels=False),
                                  overlay_panoptic(image, ids, segs, VOCAB, labels=False, captions=False))


def test_region_overlay_draws_prompts_and_keeps_coinciding_labels_apart() -> None:
    image = np.full((32, 40, 3), 90, np.uint8)
    region = np.zeros((32, 40), bool)
    region[4:20, 6:30] = True
    # Two prompts captioning the same region (a box and a point on it): both labels must stay readable.
    prompts = [("box", [6.0, 4.0, 30.0, 20.0]), ("point", [10.0, 10.0])]
    texts = ["a red ball", "a red ball"]
    both = overlay_regions(image, [region, region], texts, prompts=prompts, min_side=256)
    one = overlay_regions(image, [region], ["a red ball"], prompts=prompts[:1], min_side=256)
    assert both.shape == (256, 320, 3) and one.shape == both.shape  # enlarged 8 times
    # White label text: the second label adds pixels the first does not cover.
    white = (both == 255).all(-1) & ~(one == 255).all(-1)
    assert white.sum() > 50
    big = np.zeros((96, 40), bool)
    big[:32] = region
    painted = overlay_regions(np.full((96, 40, 3), 90, np.uint8), [big], ["x"], min_side=0)
    assert (painted[48:] == 90).all() and (painted[big] != 90).any(-1).all()  # the region only
    with pytest.raises(ValueError, match="masks"):
        overlay_regions(image, [region], ["a", "b"])
