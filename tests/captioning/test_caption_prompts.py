"""Prompted captioning: each box, point and mask becomes the region it designates, all from one pass."""

from __future__ import annotations

import pytest
import torch
from _tiny import VOCAB, image_batch, tiny_captioner, tiny_segmenter

from omtseg.boxes import box_masks
from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import SegmenterPass, segmenter_pass
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.captioning.prompts import caption_prompts
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch

SIZE = (48, 40)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[OMTSeg, SegmentCaptioner, Batch]:
    lm = make_word_level_lm(tmp_path_factory.mktemp("lm"), synthetic_caption_words(VOCAB), width=32)
    torch.manual_seed(0)  # an image the untrained segmenter finds two segments and much void in
    batch = image_batch(torch.randint(0, 256, (1, 3, *SIZE), dtype=torch.uint8), SIZE)
    return tiny_segmenter().eval(), tiny_captioner(lm).eval(), batch


def _pass(parts: tuple[OMTSeg, SegmentCaptioner, Batch]) -> SegmenterPass:
    seg, _, batch = parts
    return segmenter_pass(seg, batch.images, batch.vocabulary, batch)


def test_boxes_points_and_masks_become_their_regions(parts: tuple[OMTSeg, SegmentCaptioner, Batch]) -> None:
    _, cap, batch = parts
    tap = _pass(parts)
    panoptic = tap.results[0].panoptic
    assert len(panoptic.segments) >= 2
    first = panoptic.segments[0]
    ys, xs = torch.nonzero(panoptic.id_map == first.id, as_tuple=True)
    tight = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    region = torch.zeros(SIZE, dtype=torch.bool)
    region[5:20, 3:30] = True
    out = caption_prompts(
        tap, cap, batch, boxes=[tight, [0, 0, 6, 5]], points=[[int(xs[0]), int(ys[0])]], masks=region[None],
        min_iou=0.0, max_new_tokens=4,
    )  # fmt: skip
    assert [r.prompt for r in out] == ["box", "box", "point", "mask"]
    assert all(isinstance(r.caption, str) and r.mask.shape == SIZE for r in out)
    # A box around a segment stands for it (min_iou 0 here: the best overlap wins)...
    assert out[0].source == "segment" and out[0].segment_id is not None
    # ...a point captions the segment under it, a mask itself.
    assert (out[2].source, out[2].segment_id) == ("segment", first.id)
    assert torch.equal(out[2].mask, panoptic.id_map == first.id)
    assert out[3].source == "mask" and torch.equal(out[3].mask, region)
    # With min_iou above any IoU the box is its own region, exactly its pixels.
    (own,) = caption_prompts(tap, cap, batch, boxes=[[0, 0, 6, 5]], min_iou=1.01, max_new_tokens=4)
    assert own.source == "box" and own.segment_id is None
    assert torch.equal(own.mask, box_masks(torch.tensor([[0.0, 0.0, 6.0, 5.0]]), SIZE)[0])
    record = own.to_json()
    assert (record["area"], record["bbox"], record["value"]) == (30, [0, 0, 6, 5], [0.0, 0.0, 6.0, 5.0])


def test_a_point_on_void_is_still_captioned(parts: tuple[OMTSeg, SegmentCaptioner, Batch]) -> None:
    _, cap, batch = parts
    tap = _pass(parts)
    panoptic = tap.results[0].panoptic
    # Make the first segment void: a point there has no segment; the most confident query claims it.
    gone = panoptic.segments.pop(0)
    ys, xs = torch.nonzero(panoptic.id_map == gone.id, as_tuple=True)
    panoptic.id_map[panoptic.id_map == gone.id] = 0
    point = [int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]
    (proposal,) = caption_prompts(tap, cap, batch, points=[point], max_new_tokens=4)
    assert proposal.source == "query" and proposal.segment_id is None  # this image's queries cover it
    assert proposal.mask[point[1], point[0]] and isinstance(proposal.caption, str)
    # No query claims any pixel: a window around the point (a quarter of the short side) is captioned.
    tap.mask_logits = torch.full_like(tap.mask_logits, -1.0)
    (window,) = caption_prompts(tap, cap, batch, points=[point], max_new_tokens=4)
    assert window.source == "window" and window.mask[point[1], point[0]] and isinstance(window.caption, str)
    ys, xs = torch.nonzero(window.mask, as_tuple=True)
    assert int(xs.max() - xs.min() + 1) <= 13 and int(ys.max() - ys.min() + 1) <= 13


def test_without_prompts_every_segment_is_captioned(parts: tuple[OMTSeg, SegmentCaptioner, Batch]) -> None:
    _, cap, batch = parts
    tap = _pass(parts)
    everything = caption_prompts(tap, cap, batch, max_new_tokens=4)
    segments = tap.results[0].panoptic.segments
    assert [r.segment_id for r in everything] == [s.id for s in segments]
    assert [r.caption for r in everything] == [s.caption for s in segments]
    # A point on a segment gets the caption that segment gets in everything mode (same region, same query).
    seg_id = everything[1].segment_id
    ys, xs = torch.nonzero(tap.results[0].panoptic.id_map == seg_id, as_tuple=True)
    (pointed,) = caption_prompts(tap, cap, batch, points=[[int(xs[0]), int(ys[0])]], max_new_tokens=4)
    assert pointed.caption == everything[1].caption


def test_bad_prompts_name_the_fix(parts: tuple[OMTSeg, SegmentCaptioner, Batch]) -> None:
    _, cap, batch = parts
    tap = _pass(parts)
    cases = [
        (dict(boxes=[[10, 10, 5, 20]]), "x0 < x1"),
        (dict(boxes=[[1, 2, 3]]), "4 numbers"),
        (dict(points=[[400, 3]]), "outside"),
        (dict(masks=torch.ones(1, 5, 5, dtype=torch.bool)), "image's size"),
        (dict(masks=torch.zeros(1, *SIZE, dtype=torch.bool)), "empty"),
    ]
    for prompt, message in cases:
        with pytest.raises(ValueError, match=message):
            caption_prompts(tap, cap, batch, max_new_tokens=2, **prompt)  # type: ignore[arg-type]
