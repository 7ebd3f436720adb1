"""Hungarian matcher and point sampling: hand-solved assignments, brute-force parity, empty targets."""

from __future__ import annotations

import itertools

import pytest
import torch

from omtseg.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_bce_cost
from omtseg.modeling.point_sampling import point_sample, target_extent, uncertain_point_coords
from omtseg.types import Predictions, Targets


def make_targets(labels: list[int], masks: torch.Tensor) -> Targets:
    h, w = masks.shape[-2:]
    return Targets(
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=masks.bool(),
        is_thing=torch.ones(len(labels), dtype=torch.bool),
        crowd_labels=torch.zeros(0, dtype=torch.int64),
        crowd_masks=torch.zeros(0, h, w, dtype=torch.bool),
        void=torch.zeros(h, w, dtype=torch.bool),
        segment_ids=torch.arange(1, len(labels) + 1),
    )


def class_only_pred(probs: list[list[float]], objectness: list[float] | None = None) -> Predictions:
    p = torch.tensor(probs)
    obj = torch.zeros(len(probs)) if objectness is None else torch.tensor(objectness)
    return Predictions(
        class_logits=p.log()[None], objectness_logits=obj[None], mask_logits=torch.zeros(1, len(probs), 4, 4)
    )


def test_point_sample_reads_pixel_centres_exactly() -> None:
    masks = torch.arange(2 * 5 * 7, dtype=torch.float32).view(2, 1, 5, 7)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    coords = torch.stack([(xs.flatten() + 0.5) / 7, (ys.flatten() + 0.5) / 5], -1)[None].expand(2, -1, -1)
    out = point_sample(masks, coords)
    assert out.shape == (2, 1, 35)
    torch.testing.assert_close(out, masks.flatten(2))


def test_point_sample_with_extent_maps_targets_onto_the_canvas_and_reads_zero_beyond() -> None:
    # A 6x5 target on a 12x8 canvas: canvas pixel centre (y, x) is target pixel (y, x) or outside.
    target = torch.rand(1, 1, 6, 5)
    extent = target_extent((6, 5), (12, 8))
    ys, xs = torch.meshgrid(torch.arange(12), torch.arange(8), indexing="ij")
    coords = torch.stack([(xs.flatten() + 0.5) / 8, (ys.flatten() + 0.5) / 12], -1)[None]
    out = point_sample(target, coords, extent=extent).view(12, 8)
    torch.testing.assert_close(out[:6, :5], target[0, 0])
    assert out[6:].abs().max() == 0 and out[:, 5:].abs().max() == 0
    with pytest.raises(ValueError, match="exceed"):
        target_extent((13, 5), (12, 8))


def test_uncertain_points_prefer_the_decision_boundary() -> None:
    torch.manual_seed(0)
    logits = torch.full((1, 1, 16, 16), 10.0)
    logits[..., 8, :] = 0.0  # the only uncertain row
    coords = uncertain_point_coords(
        logits, num_points=100, oversample_ratio=20.0, importance_sample_ratio=0.5
    )
    assert coords.shape == (1, 100, 2)
    # The 50 uncertainty-chosen points sit within half a pixel of row 8's centre; the 50 fresh ones anywhere.
    assert ((coords[0, :50, 1] * 16 - 8.5).abs() < 0.5).all()
    assert ((coords[0, 50:, 1] * 16 - 8.5).abs() >= 0.5).any()


def test_class_cost_solves_a_case_greedy_gets_wrong() -> None:
    # Greedy takes the largest entry, q0 -> t0 (0.5), leaving q1 -> t1 (0.05): 0.55 in all.
    # The optimum is q0 -> t1 (0.45) and q1 -> t0 (0.48): 0.93.
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0)
    pred = class_only_pred([[0.5, 0.45, 0.05], [0.48, 0.05, 0.47]])
    ((q, t),) = matcher(pred, [make_targets([0, 1], torch.zeros(2, 16, 16))])
    assert q.tolist() == [0, 1] and t.tolist() == [1, 0]


def test_objectness_breaks_a_class_tie() -> None:
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0)
    pred = class_only_pred([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], objectness=[-3.0, 2.0, 0.0])
    ((q, t),) = matcher(pred, [make_targets([1], torch.zeros(1, 8, 8))])
    assert q.tolist() == [1] and t.tolist() == [0]


def test_class_cost_matches_brute_force_over_permutations() -> None:
    torch.manual_seed(0)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0)
    q, k, n = 5, 4, 3
    pred = Predictions(
        class_logits=torch.randn(1, q, k),
        objectness_logits=torch.randn(1, q),
        mask_logits=torch.zeros(1, q, 4, 4),
    )
    tgt = make_targets([3, 0, 3], torch.zeros(n, 16, 16))
    cost = matcher.cost_matrix(pred.class_logits[0], pred.objectness_logits[0], pred.mask_logits[0], tgt)
    expected = -(pred.class_logits[0].softmax(-1) * pred.objectness_logits[0].sigmoid()[:, None])[
        :, [3, 0, 3]
    ]
    torch.testing.assert_close(cost, expected)
    best = min(sum(float(cost[perm[j], j]) for j in range(n)) for perm in itertools.permutations(range(q), n))
    ((rows, cols),) = matcher(pred, [tgt])
    assert sum(float(cost[r, c]) for r, c in zip(rows, cols, strict=True)) == pytest.approx(best)


def test_mask_costs_match_targets_by_shape_at_quarter_resolution() -> None:
    # Targets at full 32x32, predictions at 8x8 (stride 4): left half, right half, nothing.
    masks = torch.zeros(2, 32, 32)
    masks[0, :, :16] = 1
    masks[1, :, 16:] = 1
    logits = torch.full((1, 3, 8, 8), -10.0)
    logits[0, 0, :, 4:] = 10.0  # query 0 predicts the right half
    logits[0, 1, :, :4] = 10.0  # query 1 predicts the left half
    pred = Predictions(
        class_logits=torch.zeros(1, 3, 2), objectness_logits=torch.zeros(1, 3), mask_logits=logits
    )
    matcher = HungarianMatcher(cost_class=0.0, cost_mask=1.0, cost_dice=1.0, num_points=500)
    ((q, t),) = matcher(pred, [make_targets([0, 1], masks)])
    assert q.tolist() == [0, 1] and t.tolist() == [1, 0]


def test_pairwise_costs_equal_per_pair_losses() -> None:
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 50), (torch.rand(3, 50) > 0.5).float()
    bce, dice = batch_sigmoid_bce_cost(logits, targets), batch_dice_cost(logits, targets)
    for i in range(4):
        for j in range(3):
            ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], targets[j])
            p = logits[i].sigmoid()
            ref_dice = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + targets[j].sum() + 1)
            torch.testing.assert_close(bce[i, j], ref)
            torch.testing.assert_close(dice[i, j], ref_dice)


def test_empty_targets_and_mixed_batch() -> None:
    matcher = HungarianMatcher(num_points=64)
    pred = Predictions(
        class_logits=torch.randn(2, 3, 2),
        objectness_logits=torch.randn(2, 3),
        mask_logits=torch.randn(2, 3, 5, 7),
    )
    masks = torch.zeros(1, 17, 25)
    masks[0, :5, :5] = 1
    out = matcher(pred, [make_targets([], torch.zeros(0, 20, 28)), make_targets([1], masks)])
    assert [len(q) for q, _ in out] == [0, 1] and out[0][0].dtype == torch.int64


def test_runs_in_fp32_under_autocast() -> None:
    matcher = HungarianMatcher(num_points=64)
    pred = Predictions(
        class_logits=torch.randn(1, 4, 3).bfloat16(),
        objectness_logits=torch.randn(1, 4).bfloat16(),
        mask_logits=torch.randn(1, 4, 6, 6).bfloat16(),
    )
    masks = torch.zeros(2, 24, 24)
    masks[0, :10] = 1
    masks[1, 10:] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ((q, t),) = matcher(pred, [make_targets([0, 2], masks)])
    assert len(q) == 2 and sorted(t.tolist()) == [0, 1]


def test_non_finite_costs_lose_their_match_instead_of_raising() -> None:
    # Query 0's mask holds a NaN; query 1's logits are so large that the summed BCE overflows to +inf.
    # scipy rejects such costs, so the matcher must treat them as the worst finite cost and pick query 2.
    masks = torch.zeros(1, 16, 16)
    masks[0, :, :8] = 1
    logits = torch.full((1, 3, 4, 4), -10.0)
    logits[0, 0, 0, 0] = float("nan")
    logits[0, 1] = 3e38
    logits[0, 2, :, :2] = 10.0
    pred = Predictions(
        class_logits=torch.zeros(1, 3, 2), objectness_logits=torch.zeros(1, 3), mask_logits=logits
    )
    matcher = HungarianMatcher(num_points=200)
    cost = matcher.cost_matrix(
        pred.class_logits[0], pred.objectness_logits[0], logits[0], make_targets([0], masks)
    )
    assert cost[0].isnan().all() and cost[1].isinf().all()  # the case really is non-finite
    ((q, t),) = matcher(pred, [make_targets([0], masks)])
    assert q.tolist() == [2] and t.tolist() == [0]
    # Every query bad: a match is still returned (any query), not an exception.
    ((q, t),) = matcher(
        Predictions(
            class_logits=torch.full((1, 2, 2), float("nan")),
            objectness_logits=torch.zeros(1, 2),
            mask_logits=torch.zeros(1, 2, 4, 4),
        ),
        [make_targets([1], masks)],
    )
    assert len(q) == 1 and t.tolist() == [0]
