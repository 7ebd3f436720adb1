"""Hungarian matching of decoder queries to ground-truth segments, on point-sampled mask costs.

How objectness enters: the head factors Mask2Former's softmax over K classes + "no object" into
``p(object) * p(class | object)`` (a sigmoid objectness and a softmax over the vocabulary). The class cost is
therefore ``-sigmoid(objectness) * softmax(class_logits)[label]``, which is exactly Mask2Former's
``-prob[label]`` under that factorisation: a query that is confident about the class but not about being an
object is a worse match than one confident about both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from omtseg.modeling.point_sampling import point_sample, target_extent
from omtseg.types import Predictions, Targets

WORST_COST = 1e10
"""Stands in for a NaN or +inf matching cost (and its negative for -inf): scipy rejects non-finite costs, and
one bad prediction (an overflow early in bf16 training) should lose its match, not stop the run."""


def batch_sigmoid_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (Q, P) point logits.
        targets: (N, P) point targets in [0, 1].

    Returns:
        (Q, N) costs.
    """
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    # BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0), so all pairs come from two matrix products.
    return (pos @ targets.T + neg @ (1.0 - targets).T) / num_points


def batch_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Soft dice loss of every prediction against every target.

    Args:
        logits: (Q, P) point logits.
        targets: (N, P) point targets in [0, 1].

    Returns:
        (Q, N) costs in [0, 1].
    """
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    # +1 smoothing keeps empty-vs-empty at cost 0 and avoids 0/0.
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image, minimising a weighted cost.

    A no-grad fp32 island: costs are computed in float32 with autocast off, whatever the caller runs in.

    Args:
        cost_class: weight of the class cost (``-p(object) * p(label)``).
        cost_mask: weight of the point-sampled sigmoid BCE cost.
        cost_dice: weight of the point-sampled dice cost.
        num_points: uniformly sampled points per image, shared by all predictions and targets of the image.
        mask_stride: input pixels per mask-logit pixel; the predictions cover a canvas of
            ``mask_stride * (h, w)`` input pixels, with targets anchored at its top-left corner.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        mask_stride: int = 4,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError(
                "All matcher costs are 0; give at least one of cost_class/cost_mask/cost_dice > 0."
            )
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}.")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.mask_stride = mask_stride

    def cost_matrix(
        self, class_logits: Tensor, objectness_logits: Tensor, mask_logits: Tensor, targets: Targets
    ) -> Tensor:
        """The (Q, N) matching cost of one image; inputs are that image's slices of :class:`Predictions`."""
        labels = targets.labels.to(class_logits.device)
        probs = class_logits.float().softmax(-1) * objectness_logits.float().sigmoid()[:, None]  # (Q, K)
        cost = -self.cost_class * probs[:, labels]  # (Q, N)
        if self.cost_mask == 0 and self.cost_dice == 0:
            return cost
        h, w = mask_logits.shape[-2:]
        extent = target_extent(targets.masks.shape[-2:], (h * self.mask_stride, w * self.mask_stride))
        coords = torch.rand(1, self.num_points, 2, device=mask_logits.device)
        pred_points = point_sample(mask_logits.float()[None], coords)[0]  # (Q, P)
        tgt = targets.masks.to(device=mask_logits.device, dtype=torch.float32)[None]
        tgt_points = point_sample(tgt, coords, extent=extent)[0]  # (N, P)
        return (
            cost
            + self.cost_mask * batch_sigmoid_bce_cost(pred_points, tgt_points)
            + self.cost_dice * batch_dice_cost(pred_points, tgt_points)
        )

    @torch.no_grad()
    def forward(self, pred: Predictions, targets: list[Targets]) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets.

        Args:
            pred: a decoder prediction (class_logits (B, Q, K), objectness_logits (B, Q),
                mask_logits (B, Q, h, w)); ``aux`` is ignored.
            targets: B targets; an image without segments is valid and matches nothing.

        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 tensors of length ``min(Q, N)``, sorted by query.
            Non-finite costs count as :data:`WORST_COST`, so a query with a NaN prediction is matched last.
        """
        if len(targets) != pred.class_logits.shape[0]:
            raise ValueError(
                f"Got {len(targets)} targets for a batch of {pred.class_logits.shape[0]} predictions."
            )
        device_type = pred.mask_logits.device.type
        out: list[tuple[Tensor, Tensor]] = []
        with torch.autocast(device_type=device_type, enabled=False):
            for b, tgt in enumerate(targets):
                if tgt.labels.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    out.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(
                    pred.class_logits[b], pred.objectness_logits[b], pred.mask_logits[b], tgt
                )
                cost = cost.double().nan_to_num(nan=WORST_COST, posinf=WORST_COST, neginf=-WORST_COST)
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                out.append(
                    (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
                )
        return out
