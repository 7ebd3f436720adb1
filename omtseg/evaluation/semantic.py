"""Semantic segmentation metrics (mIoU, fwIoU, pixel and mean accuracy) from a dataset confusion matrix.

The numbers are those of detectron2's ``SemSegEvaluator``: a class enters the means only when it has
ground-truth pixels (its IoU and accuracy are NaN otherwise), ``fwIoU`` weights IoUs by ground-truth
frequency, and pixels whose ground truth is the ignore index or out of range are skipped. Values are
fractions in [0, 1] (detectron2 reports percent).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from omtseg.types import IGNORE_INDEX


class SemanticMetric(Metric):
    """mIoU and friends from a (K, K) int64 confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: K.
        ignore_index: ground-truth label to skip; any label outside ``[0, K)`` is skipped as well
            (a benchmark's 255 or 65535).
        **kwargs: torchmetrics ``Metric`` options.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confusion: torch.Tensor

    def __init__(self, *, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.add_state("confusion", default=confusion, dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add pixels.

        Args:
            preds: integer labels (..., H, W), or float class scores (..., K, H, W) reduced by argmax.
            target: (..., H, W) integer labels; ``ignore_index`` and out-of-range labels are skipped.
        """
        if preds.is_floating_point():
            if preds.dim() < 3 or preds.shape[-3] != self.num_classes:
                raise ValueError(
                    f"Score predictions must be (..., K={self.num_classes}, H, W), got {tuple(preds.shape)}."
                )
            preds = preds.argmax(-3)
        if preds.shape != target.shape:
            raise ValueError(
                f"Predicted labels {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape; "
                "resize the prediction to the target."
            )
        target = target.to(self.confusion.device).long().flatten()
        preds = preds.to(self.confusion.device).long().flatten()
        keep = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        target, preds = target[keep], preds[keep]
        if preds.numel() and (preds.min() < 0 or preds.max() >= self.num_classes):
            raise ValueError(
                f"Predicted labels must lie in [0, {self.num_classes}) where the target is labelled, got "
                f"{preds.min().item()}..{preds.max().item()}."
            )
        k = self.num_classes
        self.confusion += torch.bincount(target * k + preds, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Any]:
        """``{"mIoU", "fwIoU", "mACC", "pACC"}`` as floats and ``"IoU"``, ``"ACC"`` as (K,) float64 tensors
        (NaN for classes without ground truth). Means over no valid class are NaN."""
        confusion = self.confusion.double()
        tp = confusion.diagonal()
        pos_gt = confusion.sum(1)
        pos_pred = confusion.sum(0)
        valid = pos_gt > 0
        nan = torch.full_like(tp, float("nan"))
        acc = torch.where(valid, tp / pos_gt.clamp(min=1), nan)
        iou = torch.where(valid, tp / (pos_gt + pos_pred - tp).clamp(min=1), nan)
        if not valid.any():
            means = dict.fromkeys(("mIoU", "fwIoU", "mACC", "pACC"), float("nan"))
            return {**means, "IoU": iou, "ACC": acc}
        weights = pos_gt[valid] / pos_gt.sum()
        return {
            "mIoU": iou[valid].mean().item(),
            "fwIoU": (iou[valid] * weights).sum().item(),
            "mACC": acc[valid].mean().item(),
            "pACC": (tp.sum() / pos_gt.sum()).item(),
            "IoU": iou,
            "ACC": acc,
        }
