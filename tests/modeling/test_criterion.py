"""Set criterion: finite on empty and crowded targets, gradients, hand-checked objectness and class terms."""

from __future__ import annotations

import math

import torch

from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.matcher import HungarianMatcher
from omtseg.types import Predictions, Targets


def make_targets(labels: list[int], masks: torch.Tensor, crowd: torch.Tensor | None = None) -> Targets:
    h, w = masks.shape[-2:]
    crowd = torch.zeros(0, h, w, dtype=torch.bool) if crowd is None else crowd.bool()
    return Targets(
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=masks.bool(),
        is_thing=torch.ones(len(labels), dtype=torch.bool),
        crowd_labels=torch.zeros(crowd.shape[0], dtype=torch.int64),
        crowd_masks=crowd,
        void=torch.zeros(h, w, dtype=torch.bool),
        segment_ids=torch.arange(1, len(labels) + 1),
    )


def random_pred(b: int, q: int, k: int, h: int, w: int, num_aux: int = 0) -> Predictions:
    def one() -> Predictions:
        return Predictions(
            class_logits=torch.randn(b, q, k, requires_grad=True),
            objectness_logits=torch.randn(b, q, requires_grad=True),
            mask_logits=torch.randn(b, q, h, w, requires_grad=True),
        )

    pred = one()
    pred.aux = [one() for _ in range(num_aux)]
    return pred


def criterion(**kw: float) -> SetCriterion:
    return SetCriterion(matcher=HungarianMatcher(num_points=256), num_points=256, **kw)


def test_all_terms_finite_with_aux_suffixes_and_total() -> None:
    torch.manual_seed(0)
    pred = random_pred(2, 5, 3, 7, 9, num_aux=2)
    masks = torch.zeros(2, 25, 33)
    masks[0, :10] = 1
    masks[1, 10:] = 1
    losses = criterion()(
        pred, [make_targets([0, 2], masks), make_targets([1], masks[:1, :20, :30])], num_masks=3
    )
    base = {"loss_ce", "loss_obj", "loss_mask", "loss_dice"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)} | {"loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    total = sum(v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], total)


def test_gradients_reach_every_prediction() -> None:
    torch.manual_seed(1)
    pred = random_pred(1, 4, 3, 6, 6, num_aux=1)
    masks = torch.zeros(2, 24, 24)
    masks[0, :12] = 1
    masks[1, 12:] = 1
    criterion()(pred, [make_targets([0, 1], masks)], num_masks=2)["loss"].backward()
    for p in [pred, *pred.aux]:
        for t in (p.class_logits, p.objectness_logits, p.mask_logits):
            assert t.grad is not None and t.grad.abs().sum() > 0


def test_empty_targets_give_only_no_object_loss_and_keep_the_graph() -> None:
    torch.manual_seed(2)
    pred = random_pred(2, 3, 4, 5, 5)
    empty = make_targets([], torch.zeros(0, 20, 20))
    losses = criterion()(pred, [empty, empty], num_masks=0)
    assert losses["loss_ce"] == 0 and losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    # All queries unmatched: weighted mean BCE against "no object" is the plain mean, times weight 2.
    expected = 2.0 * torch.nn.functional.softplus(pred.objectness_logits.detach()).mean()
    torch.testing.assert_close(losses["loss_obj"], expected)
    losses["loss"].backward()
    assert pred.class_logits.grad is not None and pred.mask_logits.grad is not None
    assert pred.objectness_logits.grad.abs().sum() > 0


def test_crowded_targets_more_segments_than_queries_and_crowd_regions() -> None:
    torch.manual_seed(3)
    pred = random_pred(1, 3, 6, 8, 8, num_aux=1)
    masks = torch.zeros(6, 32, 32)
    for i in range(6):
        masks[i, :, i * 5 : i * 5 + 5] = 1
    crowd = torch.zeros(1, 32, 32)
    crowd[0, :, 30:] = 1
    losses = criterion()(pred, [make_targets([0, 1, 2, 3, 4, 5], masks, crowd)], num_masks=6)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert pred.mask_logits.grad.abs().sum() > 0


def test_objectness_and_class_terms_by_hand() -> None:
    # One image, two queries, one target which only query 1 can match well (class cost alone decides).
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    crit = SetCriterion(matcher=matcher, num_points=16, class_weight=1.0, objectness_weight=1.0)
    class_logits = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    obj = torch.tensor([[0.5, -1.0]])
    pred = Predictions(class_logits=class_logits, objectness_logits=obj, mask_logits=torch.zeros(1, 2, 4, 4))
    losses = crit(pred, [make_targets([1], torch.ones(1, 16, 16))], num_masks=1)
    expected_ce = -torch.log_softmax(torch.tensor([0.0, 3.0]), 0)[1]
    # matched query 1 (target "object", weight 1); query 0 unmatched ("no object", weight 0.1).
    bce_obj = math.log1p(math.exp(1.0))  # -log sigmoid(-1)
    bce_noobj = math.log1p(math.exp(0.5))  # -log(1 - sigmoid(0.5))
    expected_obj = (bce_obj + 0.1 * bce_noobj) / 1.1
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    assert abs(float(losses["loss_obj"]) - expected_obj) < 1e-5


def test_perfect_masks_score_lower_than_inverted_ones() -> None:
    masks = torch.zeros(1, 32, 32)
    masks[0, 8:24, 8:24] = 1
    good = torch.full((1, 1, 8, 8), -8.0)
    good[0, 0, 2:6, 2:6] = 8.0
    preds = [
        Predictions(class_logits=torch.zeros(1, 1, 2), objectness_logits=torch.zeros(1, 1), mask_logits=m)
        for m in (good, -good)
    ]
    crit = criterion(dice_weight=1.0)
    good_loss, bad_loss = (crit(p, [make_targets([0], masks)], num_masks=1) for p in preds)
    # Most points sit on the boundary, where bilinear reads of the stride-4 logits are unsure: not 0.
    assert good_loss["loss_dice"] < 0.3 and bad_loss["loss_dice"] > 0.7
    assert good_loss["loss_mask"] < bad_loss["loss_mask"]
