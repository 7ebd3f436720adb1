"""Set criterion: Hungarian-matched class, objectness and point-sampled mask losses with deep supervision.

Loss terms (each multiplied by its weight, which the criterion owns):

- ``loss_ce`` (weight 2): cross-entropy over the vocabulary for matched queries, summed and divided by
  ``num_masks``. Unmatched queries get no class loss: whether a query is an object is objectness's job, so
  the vocabulary softmax never has to model "nothing" (there is no void class to compete with open-vocabulary
  names that change per batch).
- ``loss_obj`` (weight 2): binary cross-entropy of the objectness logit, matched = object, unmatched = no
  object, with unmatched queries down-weighted by ``no_object_weight`` (Mask2Former's ``eos_coef`` 0.1) and a
  weighted mean over all queries. Weight 2 equals the class weight because together the two play the role
  of Mask2Former's single (K+1)-way classification loss.
- ``loss_mask`` (weight 5) and ``loss_dice`` (weight 5): sigmoid BCE and dice on points chosen by uncertainty
  (``-|logit|``), summed over matched pairs and divided by ``num_masks``.

Every earlier decoder prediction in ``Predictions.aux`` is matched and supervised the same way, its terms
suffixed ``_0``, ``_1``, ... (oldest first). ``num_masks`` comes from the caller (the LightningModule reduces
it across processes); this module never calls ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.matcher import HungarianMatcher
from omtseg.modeling.point_sampling import point_sample, target_extent, uncertain_point_coords
from omtseg.types import Predictions, Targets

Indices = list[tuple[Tensor, Tensor]]


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Soft dice of paired rows, summed and divided by ``num_masks``. logits, targets: (M, P)."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-mask mean BCE of paired rows, summed and divided by ``num_masks``. logits, targets: (M, P)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


class SetCriterion(nn.Module):
    """Losses of OMTSeg's Mask2Former head (see the module docstring for the terms and their weights).

    Args:
        matcher: the Hungarian matcher; its ``mask_stride`` also tells this criterion how predictions map
            onto the input canvas.
        class_weight: weight of ``loss_ce``.
        mask_weight: weight of ``loss_mask``.
        dice_weight: weight of ``loss_dice``.
        objectness_weight: weight of ``loss_obj``.
        no_object_weight: relative weight of unmatched queries in ``loss_obj`` (Mask2Former's eos_coef).
        num_points: points per mask for the mask losses.
        oversample_ratio: uniform candidates per point when choosing uncertain points.
        importance_sample_ratio: share of points chosen by uncertainty.
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        objectness_weight: float = 2.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if not 0.0 < no_object_weight <= 1.0:
            raise ValueError(f"no_object_weight must be in (0, 1], got {no_object_weight}.")
        self.matcher = matcher
        self.weights = {
            "loss_ce": class_weight,
            "loss_obj": objectness_weight,
            "loss_mask": mask_weight,
            "loss_dice": dice_weight,
        }
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        # Each entry computes some unweighted terms of self.weights from one matched prediction.
        self.loss_map: dict[
            str, Callable[[Predictions, list[Targets], Indices, float], dict[str, Tensor]]
        ] = {
            "labels": self.loss_labels,
            "objectness": self.loss_objectness,
            "masks": self.loss_masks,
        }

    def loss_labels(
        self, pred: Predictions, targets: list[Targets], indices: Indices, num_masks: float
    ) -> dict[str, Tensor]:
        """``loss_ce``: vocabulary cross-entropy of matched queries."""
        batch_idx, query_idx = _flat_query_index(indices)
        logits = pred.class_logits[
            batch_idx.to(pred.class_logits.device), query_idx.to(pred.class_logits.device)
        ]
        labels = torch.cat(
            [
                t.labels[j.to(t.labels.device)].to(logits.device)
                for t, (_, j) in zip(targets, indices, strict=True)
            ]
        )
        if labels.numel() == 0:
            return {"loss_ce": pred.class_logits.sum() * 0.0}  # keeps the graph connected for DDP
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        return {"loss_ce": loss / num_masks}

    def loss_objectness(
        self, pred: Predictions, targets: list[Targets], indices: Indices, num_masks: float
    ) -> dict[str, Tensor]:
        """``loss_obj``: weighted BCE of objectness over all queries."""
        logits = pred.objectness_logits.float()  # (B, Q)
        is_object = torch.zeros_like(logits)
        batch_idx, query_idx = _flat_query_index(indices)
        is_object[batch_idx.to(logits.device), query_idx.to(logits.device)] = 1.0
        weight = torch.where(is_object > 0, 1.0, self.no_object_weight)
        loss = F.binary_cross_entropy_with_logits(logits, is_object, weight=weight, reduction="sum")
        return {"loss_obj": loss / weight.sum()}

    def loss_masks(
        self, pred: Predictions, targets: list[Targets], indices: Indices, num_masks: float
    ) -> dict[str, Tensor]:
        """``loss_mask`` and ``loss_dice`` on uncertainty-chosen points of matched masks."""
        h, w = pred.mask_logits.shape[-2:]
        canvas = (h * self.matcher.mask_stride, w * self.matcher.mask_stride)
        src_parts, tgt_parts = [], []
        for b, (t, (q, j)) in enumerate(zip(targets, indices, strict=True)):
            if q.numel() == 0:
                continue
            src = pred.mask_logits[b, q.to(pred.mask_logits.device)].float()[:, None]  # (M, 1, h, w)
            with torch.no_grad():
                coords = uncertain_point_coords(
                    src,
                    num_points=self.num_points,
                    oversample_ratio=self.oversample_ratio,
                    importance_sample_ratio=self.importance_sample_ratio,
                )  # (M, P, 2)
                tgt = t.masks[j.to(t.masks.device)].to(device=src.device, dtype=torch.float32)[:, None]
                extent = target_extent(t.masks.shape[-2:], canvas)
                tgt_parts.append(point_sample(tgt, coords, extent=extent)[:, 0])  # (M, P)
            src_parts.append(point_sample(src, coords)[:, 0])  # (M, P)
        if not src_parts:
            zero = pred.mask_logits.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src_points, tgt_points = torch.cat(src_parts), torch.cat(tgt_parts)
        return {
            "loss_mask": sigmoid_bce_loss(src_points, tgt_points, num_masks),
            "loss_dice": dice_loss(src_points, tgt_points, num_masks),
        }

    def _losses(self, pred: Predictions, targets: list[Targets], num_masks: float) -> dict[str, Tensor]:
        indices = self.matcher(pred, targets)
        out: dict[str, Tensor] = {}
        for loss_fn in self.loss_map.values():
            out.update(loss_fn(pred, targets, indices, num_masks))
        return {k: v * self.weights[k] for k, v in out.items()}

    def forward(self, pred: Predictions, targets: list[Targets], num_masks: float) -> dict[str, Tensor]:
        """All weighted loss terms and their sum.

        Args:
            pred: the final decoder prediction with earlier ones in ``pred.aux`` (class_logits (B, Q, K),
                objectness_logits (B, Q), mask_logits (B, Q, h, w)).
            targets: B targets with masks (N, H, W) at the input size (anchored top-left on the canvas).
            num_masks: the number of target segments to normalise by (across processes); clamped to >= 1.

        Returns:
            ``loss_ce``, ``loss_obj``, ``loss_mask``, ``loss_dice``, the same with ``_i`` for ``pred.aux[i]``,
            and ``loss`` (the total).
        """
        num_masks = max(float(num_masks), 1.0)
        losses = self._losses(pred, targets, num_masks)
        for i, aux in enumerate(pred.aux):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_masks).items()})
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses


def _flat_query_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched query, flattened over the batch."""
    batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
    query = torch.cat([q for q, _ in indices])
    return batch, query
