"""The PQ core on hand-built images: matching, void and crowd rules, empty inputs, errors, the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omtseg.evaluation.pq import PQStats, match_segments, paint_targets, summarize
from omtseg.types import Targets


def _match(gt_map, gt_segments, pred_map, pred_segments, num_classes=3, gt_areas=None) -> PQStats:
    """gt_segments: [(id, label, crowd)], pred_segments: [(id, label)]; areas counted on the map."""
    gt_map, pred_map = np.asarray(gt_map), np.asarray(pred_map)
    ids = np.array([s[0] for s in gt_segments], dtype=np.int64)
    return match_segments(
        gt_map=gt_map,
        gt_ids=ids,
        gt_labels=np.array([s[1] for s in gt_segments], dtype=np.int64),
        gt_crowd=np.array([s[2] for s in gt_segments], dtype=bool),
        gt_areas=np.array([(gt_map == i).sum() for i in ids]) if gt_areas is None else np.array(gt_areas),
        pred_map=pred_map,
        pred_ids=np.array([s[0] for s in pred_segments], dtype=np.int64),
        pred_labels=np.array([s[1] for s in pred_segments], dtype=np.int64),
        num_classes=num_classes,
    )


def test_iou_must_exceed_one_half() -> None:
    gt = [[1, 1, 1, 1]]
    half = _match(gt, [(1, 0, False)], [[2, 2, 0, 0]], [(2, 0)])
    assert (half.tp[0], half.fp[0], half.fn[0]) == (0, 1, 1)
    more = _match(gt, [(1, 0, False)], [[2, 2, 2, 0]], [(2, 0)])
    assert (more.tp[0], more.fp[0], more.fn[0]) == (1, 0, 0) and more.iou[0] == pytest.approx(0.75)


def test_void_pixels_leave_the_union_and_excuse_false_positives() -> None:
    # The prediction spills over 3 void pixels: IoU 2/2, not 2/5.
    stats = _match([[1, 1, 0, 0, 0]], [(1, 0, False)], [[4, 4, 4, 4, 4]], [(4, 0)])
    assert (stats.tp[0], stats.iou[0], stats.fp[0]) == (1, 1.0, 0)
    # An unmatched prediction more than half on void is no false positive; exactly half is.
    on_void = _match([[1, 1, 0, 0, 0, 0]], [(1, 0, False)], [[0, 0, 7, 7, 7, 0]], [(7, 1)])
    assert on_void.fp.sum() == 0 and on_void.fn[0] == 1
    half_void = _match([[1, 1, 1, 0, 0, 0]], [(1, 0, False)], [[0, 7, 7, 7, 7, 0]], [(7, 1)])
    assert half_void.fp[1] == 1


def test_crowd_is_never_matched_or_missed_and_excuses_its_class_only() -> None:
    gt = [[5, 5, 5, 5, 1, 1]]
    segments = [(5, 0, True), (1, 2, False)]
    same_class = _match(gt, segments, [[8, 8, 8, 0, 0, 0]], [(8, 0)])
    assert same_class.tp.sum() == 0 and same_class.fp.sum() == 0 and same_class.fn.tolist() == [0, 0, 1]
    other_class = _match(gt, segments, [[8, 8, 8, 0, 0, 0]], [(8, 1)])
    assert other_class.fp.tolist() == [0, 1, 0]


def test_the_last_crowd_segment_of_a_class_is_the_one_that_counts() -> None:
    # Two crowd segments of class 0; the prediction lies on the first (ids 5) -> a false positive,
    # since panopticapi keeps only the last crowd segment per class.
    gt = [[5, 5, 5, 6, 6, 6]]
    on_first = _match(gt, [(5, 0, True), (6, 0, True)], [[8, 8, 8, 0, 0, 0]], [(8, 0)])
    on_last = _match(gt, [(5, 0, True), (6, 0, True)], [[0, 0, 0, 8, 8, 8]], [(8, 0)])
    assert on_first.fp[0] == 1 and on_last.fp[0] == 0


def test_wrong_class_is_a_false_positive_and_a_miss() -> None:
    stats = _match([[1, 1], [1, 1]], [(1, 0, False)], [[3, 3], [3, 3]], [(3, 2)])
    assert stats.fn.tolist() == [1, 0, 0] and stats.fp.tolist() == [0, 0, 1] and stats.tp.sum() == 0


@pytest.mark.parametrize(("h", "w"), [(0, 0), (1, 1), (7, 13)])
def test_empty_images(h: int, w: int) -> None:
    stats = _match(np.zeros((h, w), np.int64), [], np.zeros((h, w), np.int64), [])
    assert stats.tp.sum() == stats.fp.sum() == stats.fn.sum() == 0 and stats.iou.shape == (3,)


def test_ground_truth_listed_but_absent_is_missed() -> None:
    stats = _match([[0, 0]], [(9, 1, False)], [[0, 0]], [])
    assert stats.fn.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("pred_map", "pred_segments", "message"),
    [
        ([[1, 2]], [(1, 0)], "not in segments_info"),
        ([[1, 1]], [(1, 0), (2, 0)], "not in the PNG"),
        ([[1, 1]], [(1, 5)], "outside"),
        ([[1, 1]], [(1, 0), (1, 0)], "repeat"),
        ([[1, 1, 1]], [(1, 0)], "ground truth's size"),
    ],
)
def test_malformed_prediction_raises(pred_map, pred_segments, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _match([[1, 1]], [(1, 0, False)], pred_map, pred_segments)


def test_summary_layout_and_averages() -> None:
    stats = PQStats.zeros(3)
    stats.tp[:] = [2, 0, 1]
    stats.iou[:] = [1.6, 0.0, 0.6]
    stats.fp[:] = [0, 0, 1]
    stats.fn[:] = [2, 0, 0]
    result = summarize(stats, is_thing=[True, True, False], keys=[10, 20, 30])
    assert result["per_class"][10] == pytest.approx({"pq": 1.6 / 3, "sq": 0.8, "rq": 2 / 3})
    assert result["per_class"][20] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["per_class"][30] == pytest.approx({"pq": 0.4, "sq": 0.6, "rq": 2 / 3})
    assert result["Things"]["n"] == 1 and result["Things"]["pq"] == pytest.approx(1.6 / 3)
    assert result["All"]["n"] == 2 and result["All"]["pq"] == pytest.approx((1.6 / 3 + 0.4) / 2)
    empty = summarize(PQStats.zeros(2), is_thing=[True, False])
    assert empty["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0} and set(empty["per_class"]) == {0, 1}
    with pytest.raises(ValueError, match="one per class"):
        summarize(stats, is_thing=[True])


def test_paint_targets_orders_segments_crowd_then_void() -> None:
    masks = torch.zeros(2, 3, 5, dtype=torch.bool)
    masks[0, :, :2] = True
    masks[1, :, 2:4] = True
    crowd = torch.zeros(1, 3, 5, dtype=torch.bool)
    crowd[0, :, 4] = True
    void = torch.zeros(3, 5, dtype=torch.bool)
    void[0] = True
    targets = Targets(
        labels=torch.tensor([2, 0]),
        masks=masks,
        is_thing=torch.tensor([True, False]),
        crowd_labels=torch.tensor([1]),
        crowd_masks=crowd,
        void=void,
        segment_ids=torch.tensor([40, 50]),
    )
    id_map, ids, labels, is_crowd = paint_targets(targets, [40, 50, 51])
    assert id_map.tolist() == [[0] * 5, [40, 40, 50, 50, 51], [40, 40, 50, 50, 51]]
    assert ids.tolist() == [40, 50, 51] and labels.tolist() == [2, 0, 1]
    assert is_crowd.tolist() == [False, False, True]
    assert paint_targets(targets)[1].tolist() == [1, 2, 3]
