"""PanopticQuality (the in-loop metric) equals pq_compute on the same data and sums across processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _panoptic_cases import load_in_memory, random_case, sample_case, sample_root

from omtseg.evaluation.panoptic import PanopticQuality, pq_compute
from omtseg.types import PanopticResult, PanopticSegment, Targets, Vocabulary

SAMPLE = sample_root()


def _assert_same(a: dict, b: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert a[group] == pytest.approx(b[group], abs=1e-12)
    assert a["per_class"].keys() == b["per_class"].keys()
    for key, values in b["per_class"].items():
        assert a["per_class"][key] == pytest.approx(values, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_metric_equals_pq_compute_on_random_cases(tmp_path: Path, seed: int) -> None:
    gt_json, pred_json = random_case(tmp_path, seed, num_images=4)
    targets, results, vocabulary = load_in_memory(gt_json, pred_json)
    metric = PanopticQuality(vocabulary=vocabulary)
    metric.update(results[:1], targets[:1])
    metric.update(results[1:], targets[1:])
    _assert_same(metric.compute(), pq_compute(gt_json, pred_json, workers=1))


@pytest.mark.skipif(SAMPLE is None, reason="COCO panoptic sample not found")
def test_metric_equals_pq_compute_on_the_sample(tmp_path: Path) -> None:
    pred_json, _ = sample_case(tmp_path, SAMPLE, seed=1)
    gt_json = tmp_path / "gt.json"
    gt_json.write_bytes((SAMPLE / "panoptic.json").read_bytes())
    (tmp_path / "gt").symlink_to(SAMPLE / "panoptic")
    targets, results, vocabulary = load_in_memory(gt_json, pred_json)
    metric = PanopticQuality(vocabulary=vocabulary)
    metric.update(results, targets)
    expected = pq_compute(gt_json, pred_json, workers=1)
    assert 0 < expected["All"]["pq"] < 1
    _assert_same(metric.compute(), expected)


def test_states_sum_like_a_distributed_reduce(tmp_path: Path) -> None:
    gt_json, pred_json = random_case(tmp_path, seed=21, num_images=4)
    targets, results, vocabulary = load_in_memory(gt_json, pred_json)
    rank0, rank1, single = (PanopticQuality(vocabulary=vocabulary) for _ in range(3))
    rank0.update(results[:2], targets[:2])
    rank1.update(results[2:], targets[2:])
    single.update(results, targets)
    assert rank0.tp.dtype == rank0.fp.dtype == rank0.fn.dtype == torch.int64
    rank0.merge_state(rank1)
    _assert_same(rank0.compute(), single.compute())
    single.reset()
    assert single.tp.sum() == 0 and single.iou.dtype == torch.float64


def _vocabulary() -> Vocabulary:
    return Vocabulary.from_names(["cat", "sky"], is_thing=[True, False])


def _targets(h: int, w: int) -> Targets:
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, : h // 2] = True
    return Targets(
        labels=torch.tensor([1]),
        masks=masks,
        is_thing=torch.tensor([False]),
        crowd_labels=torch.zeros(0, dtype=torch.int64),
        crowd_masks=torch.zeros(0, h, w, dtype=torch.bool),
        void=torch.zeros(h, w, dtype=torch.bool),
        segment_ids=torch.tensor([1]),
    )


def test_odd_sizes_perfect_and_empty_predictions() -> None:
    metric = PanopticQuality(vocabulary=_vocabulary())
    target = _targets(7, 11)
    perfect = PanopticResult(
        id_map=target.masks[0].to(torch.int32) * 3, segments=[PanopticSegment(3, 1, False, 0.9, 33)]
    )
    metric.update([perfect], [target])
    assert metric.compute()["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    nothing = PanopticResult(id_map=torch.zeros(7, 11, dtype=torch.int32), segments=[])
    metric.update([nothing], [target])
    result = metric.compute()
    assert result["per_class"][2] == {"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3}
    assert result["Things"]["n"] == 0 and result["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    metric.update([], [])
    assert metric.compute()["All"]["n"] == 1


def test_mismatched_inputs_raise() -> None:
    metric = PanopticQuality(vocabulary=_vocabulary())
    with pytest.raises(ValueError, match="one per image"):
        metric.update([], [_targets(4, 4)])
    small = PanopticResult(id_map=torch.zeros(3, 4, dtype=torch.int32), segments=[])
    with pytest.raises(ValueError, match="ground truth's size"):
        metric.update([small], [_targets(4, 4)])
    listed_not_drawn = PanopticResult(
        id_map=torch.zeros(4, 4, dtype=torch.int32), segments=[PanopticSegment(5, 0, True, 0.5, 0)]
    )
    with pytest.raises(ValueError, match="not in the PNG/id map"):
        metric.update([listed_not_drawn], [_targets(4, 4)])
