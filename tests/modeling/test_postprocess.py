"""Post-processing on crafted predictions: exact segments, stuff merging, hidden queries, size mapping."""

from __future__ import annotations

import pytest
import torch

from omtseg.modeling.postprocess import (
    image_result,
    instance_inference,
    masks_to_original,
    panoptic_inference,
    semantic_inference,
)
from omtseg.types import ImageInfo

IS_THING = (True, False, True)  # 0 thing, 1 stuff, 2 thing


def crafted() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five queries on an 8x8 output; see the expectations in the tests."""
    cls = torch.full((5, 3), 0.0)
    cls[0, 0] = cls[1, 1] = cls[2, 1] = cls[3, 2] = cls[4, 0] = 12.0
    obj = torch.tensor([10.0, 9.0, 8.0, 5.0, -5.0])
    masks = torch.full((5, 8, 8), -10.0)
    masks[0, :4, :4] = 10.0  # thing, class 0
    masks[1, 4:, :4] = 10.0  # stuff, class 1
    masks[2, 4:, 4:] = 10.0  # stuff, class 1 again: merges with query 1
    masks[3, :4, :5] = 10.0  # thing, class 2, lower score, 16 of its 20 pixels under query 0
    masks[4, :4, 4:] = 10.0  # not an object
    return cls, obj, masks


def test_panoptic_exact_segments_merges_stuff_and_drops_hidden_query() -> None:
    cls, obj, masks = crafted()
    result = panoptic_inference(cls, obj, masks, is_thing=IS_THING)
    assert [(s.id, s.label, s.is_thing, s.area) for s in result.segments] == [
        (1, 0, True, 16),
        (2, 1, False, 32),
    ]
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[:4, :4] = 1
    expected[4:] = 2
    assert result.id_map.dtype == torch.int32
    assert torch.equal(result.id_map, expected)
    assert result.segments[0].score == pytest.approx(float(torch.sigmoid(torch.tensor(10.0))), abs=1e-4)


def test_panoptic_overlap_threshold_keeps_a_visible_enough_query() -> None:
    cls, obj, masks = crafted()
    result = panoptic_inference(cls, obj, masks, is_thing=IS_THING, overlap_threshold=0.1)
    assert [(s.id, s.label, s.area) for s in result.segments] == [(1, 0, 16), (2, 1, 32), (3, 2, 4)]
    assert (result.id_map == 3).sum() == 4 and (result.id_map[:4, 4] == 3).all()


def test_panoptic_nothing_above_threshold_is_all_void() -> None:
    cls, obj, masks = crafted()
    result = panoptic_inference(cls, obj - 20.0, masks, is_thing=IS_THING)
    assert result.segments == [] and result.id_map.shape == (8, 8) and result.id_map.max() == 0


def test_panoptic_empty_queries() -> None:
    result = panoptic_inference(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 5, 7), is_thing=IS_THING)
    assert result.segments == [] and result.id_map.shape == (5, 7)


def test_semantic_is_the_best_class_of_a_loop_over_queries() -> None:
    torch.manual_seed(0)
    cls, obj, masks = torch.randn(4, 3), torch.randn(4), torch.randn(4, 5, 7)
    out = semantic_inference(cls, obj, masks)
    ref = torch.zeros(3, 5, 7)
    for q in range(4):
        p = cls[q].softmax(0) * obj[q].sigmoid()
        ref += p[:, None, None] * masks[q].sigmoid()[None]
    assert out.labels.shape == (5, 7) and out.labels.dtype == torch.int32
    assert torch.equal(out.labels.long(), ref.argmax(0))
    torch.testing.assert_close(out.scores, ref.max(0).values)


def test_instances_things_only_topk_and_mask_quality() -> None:
    cls, obj, masks = crafted()
    masks[0, 0, 0] = 0.5  # one unsure pixel lowers query 0's mask quality
    inst = instance_inference(cls, obj, masks, is_thing=IS_THING, top_k=3)
    assert len(inst.labels) == 3 and set(inst.labels.tolist()) <= {0, 2}
    assert inst.labels[0] == 0 and torch.equal(inst.masks[0], masks[0] > 0)
    p = cls[0].softmax(0)[0] * obj[0].sigmoid()
    quality = (masks[0].sigmoid() * (masks[0] > 0)).sum() / (masks[0] > 0).sum()
    torch.testing.assert_close(inst.scores[0], p * quality)
    assert inst.masks.dtype == torch.bool and inst.masks.shape == (3, 8, 8)
    every = instance_inference(cls, obj, masks, is_thing=None, top_k=100)
    assert len(every.labels) == 15  # Q * K pairs, fewer than top_k
    none = instance_inference(cls, obj, masks, is_thing=(False, False, False))
    assert len(none.labels) == 0 and none.masks.shape == (0, 8, 8)


def test_masks_to_original_crops_padding_resizes_and_unflips() -> None:
    # Canvas 32x32 (8x8 logits at stride 4); content 20x24 at the top-left; original 40x48, flipped.
    logits = torch.full((1, 8, 8), -10.0)
    logits[0, :, :3] = 10.0  # the left 12 canvas pixels
    info = ImageInfo(image_id=1, file_name="x.jpg", orig_size=(40, 48), resized_size=(20, 24), flipped=True)
    out = masks_to_original(logits, canvas_hw=(32, 32), info=info)
    assert out.shape == (1, 40, 48)
    positive = out[0] > 0
    # 12 of the 24 content columns -> 24 of 48 original columns, then mirrored to the right half.
    assert positive[:, 24:].all() and not positive[:, :24].any()
    unflipped = masks_to_original(logits, canvas_hw=(32, 32), info=ImageInfo(1, "x.jpg", (40, 48), (20, 24)))
    torch.testing.assert_close(unflipped.flip(-1), out)
    with pytest.raises(ValueError, match="resized_size"):
        masks_to_original(logits, canvas_hw=(16, 16), info=info)


def test_image_result_all_tasks_at_original_size() -> None:
    cls, obj, masks = crafted()  # 8x8 logits = a 32x32 canvas
    info = ImageInfo(image_id=7, file_name="y.png", orig_size=(13, 11), resized_size=(32, 32))
    result = image_result(cls, obj, masks, info=info, canvas_hw=(32, 32), is_thing=IS_THING)
    assert result.info is info
    assert result.panoptic.id_map.shape == (13, 11) and len(result.panoptic.segments) == 2
    assert sum(s.area for s in result.panoptic.segments) == int((result.panoptic.id_map > 0).sum())
    assert result.semantic.labels.shape == (13, 11) and result.instances.masks.shape[1:] == (13, 11)
    only = image_result(
        cls, obj, masks, info=info, canvas_hw=(32, 32), is_thing=IS_THING, tasks=("semantic",)
    )
    assert only.panoptic is None and only.instances is None and only.semantic is not None
    with pytest.raises(ValueError, match="Unknown tasks"):
        image_result(cls, obj, masks, info=info, canvas_hw=(32, 32), is_thing=IS_THING, tasks=("depth",))
