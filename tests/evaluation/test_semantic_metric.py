"""SemanticMetric: hand-computed values, ignore handling, absent classes, score input, torchmetrics parity."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from omtseg.evaluation.semantic import SemanticMetric

TARGET = torch.tensor([[0, 0, 1, 1], [2, -1, 0, 255]])
PREDS = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])


def test_hand_computed_values() -> None:
    # Valid pixels (gt -> pred): 0->0, 0->1, 1->1, 1->1, 2->0, 0->0. tp = [2, 2, 0],
    # gt counts [3, 2, 1], pred counts [3, 3, 0]; IoU = [2/4, 2/3, 0/1].
    metric = SemanticMetric(num_classes=3)
    metric.update(PREDS, TARGET)
    result = metric.compute()
    assert metric.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["IoU"].tolist() == pytest.approx([0.5, 2 / 3, 0.0])
    assert result["mIoU"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert result["fwIoU"] == pytest.approx((3 * 0.5 + 2 * 2 / 3) / 6)
    assert result["pACC"] == pytest.approx(4 / 6)
    assert result["mACC"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_class_without_ground_truth_leaves_the_means() -> None:
    # Class 3 is predicted once but never labelled: NaN, excluded (as detectron2 does).
    metric = SemanticMetric(num_classes=4)
    preds = PREDS.clone()
    preds[0, 1] = 3
    metric.update(preds, TARGET)
    result = metric.compute()
    assert math.isnan(result["IoU"][3]) and math.isnan(result["ACC"][3])
    assert result["IoU"][:3].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert result["mIoU"] == pytest.approx(1.5 / 3)


def test_scores_batches_and_custom_ignore_index() -> None:
    scores = torch.nn.functional.one_hot(PREDS, 3).permute(2, 0, 1).float()  # (K, H, W)
    by_scores, by_labels = SemanticMetric(num_classes=3), SemanticMetric(num_classes=3)
    by_scores.update(scores[None].repeat(2, 1, 1, 1), TARGET[None].repeat(2, 1, 1))
    by_labels.update(PREDS, TARGET)
    assert torch.equal(by_scores.confusion, 2 * by_labels.confusion)
    ignore_zero = SemanticMetric(num_classes=3, ignore_index=0)
    ignore_zero.update(PREDS, TARGET)
    assert ignore_zero.confusion[0].sum() == 0 and ignore_zero.confusion.sum() == 3


@pytest.mark.parametrize(("h", "w"), [(0, 5), (1, 1), (13, 7)])
def test_odd_and_empty_sizes(h: int, w: int) -> None:
    metric = SemanticMetric(num_classes=5)
    target = torch.randint(-1, 7, (h, w))
    metric.update(torch.randint(0, 5, (h, w)), target)
    assert metric.confusion.sum() == ((target >= 0) & (target < 5)).sum()
    all_ignored = SemanticMetric(num_classes=2)
    all_ignored.update(torch.zeros(h, w, dtype=torch.int64), torch.full((h, w), -1))
    assert math.isnan(all_ignored.compute()["mIoU"])


def test_matches_torchmetrics_per_class_iou_and_merges() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(-1, 6, (3, 17, 23), generator=g)
    noise = torch.randint(0, 6, (3, 17, 23), generator=g)
    preds = torch.where(torch.rand(3, 17, 23, generator=g) < 0.6, target.clamp(min=0), noise)
    reference = MulticlassJaccardIndex(num_classes=6, average=None, ignore_index=-1)(preds, target)
    first, second = SemanticMetric(num_classes=6), SemanticMetric(num_classes=6)
    first.update(preds[:1], target[:1])
    second.update(preds[1:], target[1:])
    first.merge_state(second)
    assert first.compute()["IoU"].float() == pytest.approx(reference, abs=1e-6)


def test_bad_inputs_raise() -> None:
    metric = SemanticMetric(num_classes=3)
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(PREDS[:, :3], TARGET)
    with pytest.raises(ValueError, match="K=3"):
        metric.update(torch.zeros(2, 2, 4), TARGET)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        metric.update(torch.full_like(TARGET, 3), TARGET)
    with pytest.raises(ValueError, match="num_classes"):
        SemanticMetric(num_classes=0)
