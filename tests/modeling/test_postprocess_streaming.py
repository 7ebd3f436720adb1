"""Streaming post-processing against the whole-tensor computation it replaced.

Until issue 16/14 every query's mask was resized to the output size at once, (Q, H0, W0) floats, and semantic
output was a (K, H0, W0) score tensor. The functions below are that computation, kept as the reference:
panoptic and instance results of the streaming code must equal it on fixed random logits, with blocks of
queries forced small so that the block merging is exercised.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.modeling import postprocess
from omtseg.modeling.postprocess import (
    OutputMasks,
    image_result,
    instance_inference,
    masks_to_original,
    panoptic_inference,
    query_class_scores,
    segment_query_ious,
    semantic_inference,
)
from omtseg.types import ImageInfo, InstanceResult, PanopticResult, PanopticSegment

Case = tuple[Tensor, Tensor, Tensor, ImageInfo, tuple[int, int], list[bool]]


def whole_panoptic(
    cls: Tensor, obj: Tensor, masks: Tensor, is_thing: Sequence[bool], object_threshold: float,
    overlap_threshold: float,
) -> PanopticResult:  # fmt: skip
    """The pre-streaming panoptic_inference, verbatim in substance: masks (Q, H, W) at the output size."""
    h, w = masks.shape[-2:]
    id_map = torch.zeros(h, w, dtype=torch.int32)
    scores, labels = query_class_scores(cls, obj).max(-1)
    keep = (scores > object_threshold).nonzero().squeeze(1)
    if keep.numel() == 0:
        return PanopticResult(id_map=id_map, segments=[])
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    scores, labels = scores[keep], labels[keep]
    probs = masks[keep].float().sigmoid()
    owner = (scores[:, None, None] * probs).argmax(0)
    segments: list[PanopticSegment] = []
    stuff: dict[int, PanopticSegment] = {}
    for i in range(keep.numel()):
        won, own = owner == i, probs[i] >= 0.5
        visible = won & own
        own_area, visible_area = int(own.sum()), int(visible.sum())
        if own_area == 0 or visible_area == 0 or int(won.sum()) / own_area < overlap_threshold:
            continue
        label = int(labels[i])
        if not is_thing[label] and label in stuff:
            seg = stuff[label]
            seg.area += visible_area
        else:
            thing = bool(is_thing[label])
            seg = PanopticSegment(len(segments) + 1, label, thing, float(scores[i]), visible_area)
            segments.append(seg)
            if not is_thing[label]:
                stuff[label] = seg
        id_map[visible] = seg.id
    return PanopticResult(id_map=id_map, segments=segments)


def whole_instances(
    cls: Tensor, obj: Tensor, masks: Tensor, is_thing: Sequence[bool], top_k: int
) -> InstanceResult:
    """The pre-streaming instance_inference: every chosen pair's mask as (M, H, W) floats."""
    scores = query_class_scores(cls, obj)
    things = torch.as_tensor(list(is_thing), dtype=torch.bool)
    flat = scores.masked_fill(~things[None], -1.0).flatten()
    top = flat.topk(min(top_k, int((flat >= 0).sum())))
    query_idx, labels = top.indices // scores.shape[1], top.indices % scores.shape[1]
    logits = masks[query_idx].float()
    binary = logits > 0
    quality = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return InstanceResult(masks=binary, labels=labels, scores=top.values * quality)


def random_image(seed: int) -> Case:
    """Logits of Q queries over K classes on a stride-4 canvas, an image of odd size, flipped or not."""
    g = torch.Generator().manual_seed(seed)
    q, k = 12 + seed % 7, 3 + seed % 5
    h, w = 8 + 4 * (seed % 3), 12 - 4 * (seed % 2)
    canvas = (4 * h, 4 * w)
    content = (canvas[0] - seed % 5, canvas[1] - 3 * (seed % 3))
    orig = (37 + 29 * (seed % 4), 81 - 17 * (seed % 3))  # smaller and larger than the content
    info = ImageInfo(seed, "x.png", orig_size=orig, resized_size=content, flipped=seed % 2 == 1)
    cls = 4.0 * torch.randn(q, k, generator=g)
    obj = 3.0 * torch.randn(q, generator=g)
    coarse = 4.0 * torch.randn(1, q, 3, 4, generator=g)
    masks = F.interpolate(coarse, size=(h, w), mode="bilinear")[0] + 0.5 * torch.randn(q, h, w, generator=g)
    is_thing = [bool(t) for t in torch.rand(k, generator=g) < 0.5]
    return cls, obj, masks, info, canvas, is_thing


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A few output-size maps per block (the outputs here are at most ~140 x 81 and the canvases 64 x 48).
    monkeypatch.setattr(postprocess, "BLOCK_ELEMENTS", 3 * 140 * 81)


@pytest.mark.parametrize("seed", range(8))
def test_panoptic_and_instances_equal_the_whole_tensor_computation(seed: int, small_blocks: None) -> None:
    cls, obj, masks, info, canvas, is_thing = random_image(seed)
    stream = OutputMasks(masks, canvas_hw=canvas, info=info)
    assert stream.block_size() < masks.shape[0]  # the merge across blocks is what is tested
    full = masks_to_original(masks, canvas_hw=canvas, info=info)  # (Q, H0, W0), what the old code held
    painted = 0
    for thresholds in ((0.0, 0.8), (0.1, 0.5), (0.3, 0.0)):
        expected = whole_panoptic(cls, obj, full, is_thing, *thresholds)
        got = panoptic_inference(cls, obj, stream, is_thing=is_thing, object_threshold=thresholds[0],
                                 overlap_threshold=thresholds[1])  # fmt: skip
        assert torch.equal(got.id_map, expected.id_map)
        assert [vars(s) for s in got.segments] == [vars(s) for s in expected.segments]
        painted += len(got.segments)
    assert painted >= 3  # the cases paint segments, not only void
    expected_inst = whole_instances(cls, obj, full, is_thing, top_k=10)
    inst = instance_inference(cls, obj, stream, is_thing=is_thing, top_k=10)
    assert torch.equal(inst.masks, expected_inst.masks) and torch.equal(inst.labels, expected_inst.labels)
    torch.testing.assert_close(inst.scores, expected_inst.scores, rtol=1e-6, atol=0.0)


def test_semantic_streams_classes_as_mask2former_scores_at_the_model_input(
    small_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls, obj, masks, info, canvas, _ = random_image(3)
    cls = 6.0 * torch.randn(cls.shape[0], 50, generator=torch.Generator().manual_seed(1))  # 50 classes, peaky
    considered = []
    winners = postprocess._possible_winners

    def spy(*args: object) -> Tensor:
        considered.append(winners(*args))  # type: ignore[arg-type]
        return considered[-1]

    monkeypatch.setattr(postprocess, "_possible_winners", spy)
    result = semantic_inference(cls, obj, OutputMasks(masks, canvas_hw=canvas, info=info))
    assert 5 < len(considered[0]) < 40  # classes that cannot win anywhere were skipped, not all of them
    # Reference: probabilities at the model input, (K, rh, rw) scores, resized to the output as a whole.
    rh, rw = info.resized_size
    probs = F.interpolate(masks[None], size=canvas, mode="bilinear")[0, :, :rh, :rw].sigmoid()
    scores = torch.einsum("qk,qhw->khw", query_class_scores(cls, obj), probs)
    scores = F.interpolate(scores[None], size=info.orig_size, mode="bilinear")[0].flip(-1)  # (K, H0, W0)
    top2 = scores.topk(2, dim=0).values
    clear = top2[0] - top2[1] > 1e-5  # pixels whose best class no rounding can change
    assert result.labels.shape == info.orig_size and result.labels.dtype == torch.int32
    assert clear.float().mean() > 0.99
    assert torch.equal(result.labels.long()[clear], scores.argmax(0)[clear])
    assert len(result.labels.unique()) >= 4 and int(result.labels.max()) >= 3 * OutputMasks(
        masks, canvas_hw=canvas, info=info
    ).block_size()  # winners from several class blocks
    torch.testing.assert_close(result.scores, top2[0], rtol=1e-5, atol=1e-6)


def test_no_output_size_block_exceeds_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2,000 classes and 60 queries on a 300 x 400 output: the old code held (2000 + 60) x 300 x 400 floats.
    budget = 8 * 300 * 400
    monkeypatch.setattr(postprocess, "BLOCK_ELEMENTS", budget)
    largest = 0
    resize = postprocess.content_to_original

    def watched(maps: torch.Tensor, *, info: ImageInfo) -> torch.Tensor:
        nonlocal largest
        out = resize(maps, info=info)
        largest = max(largest, out.numel())
        return out

    monkeypatch.setattr(postprocess, "content_to_original", watched)
    g = torch.Generator().manual_seed(0)
    cls, obj = torch.randn(60, 2000, generator=g), torch.randn(60, generator=g) + 3
    masks = torch.randn(60, 16, 16, generator=g)
    info = ImageInfo(image_id=0, file_name="big.png", orig_size=(300, 400), resized_size=(48, 64))
    result = image_result(cls, obj, masks, info=info, canvas_hw=(64, 64), is_thing=[True] * 2000,
                          object_threshold=0.0, top_k=5)  # fmt: skip
    assert 0 < largest <= budget
    assert result.semantic.labels.shape == (300, 400) and result.semantic.scores.shape == (300, 400)
    assert int(result.semantic.labels.max()) >= 1000  # classes of late blocks win pixels
    assert result.panoptic.segments and result.instances.masks.shape == (5, 300, 400)


def test_only_requested_tasks_run(monkeypatch: pytest.MonkeyPatch) -> None:
    cls, obj, masks, info, canvas, is_thing = random_image(0)
    for name in ("instance_inference", "semantic_inference"):
        monkeypatch.setattr(postprocess, name, lambda *a, **k: pytest.fail("a task that was not asked ran"))
    result = image_result(cls, obj, masks, info=info, canvas_hw=canvas, is_thing=is_thing, tasks=["panoptic"])
    assert result.panoptic is not None and result.semantic is None and result.instances is None


def test_segment_query_ious_equal_the_dense_computation(small_blocks: None) -> None:
    cls, obj, masks, info, canvas, is_thing = random_image(5)
    stream = OutputMasks(masks, canvas_hw=canvas, info=info)
    pan = panoptic_inference(cls, obj, stream, is_thing=is_thing, object_threshold=0.0, overlap_threshold=0.3)
    ids: Sequence[int] = [s.id for s in pan.segments]
    assert len(ids) >= 2
    pred = (masks_to_original(masks, canvas_hw=canvas, info=info) > 0).flatten(1).float()  # (Q, H0 W0)
    regions = torch.stack([pan.id_map == i for i in ids]).flatten(1).float()  # (S, H0 W0)
    inter = regions @ pred.T
    union = regions.sum(1, keepdim=True) + pred.sum(1)[None] - inter
    torch.testing.assert_close(segment_query_ious(stream, pan.id_map, ids), inter / union.clamp(min=1))
