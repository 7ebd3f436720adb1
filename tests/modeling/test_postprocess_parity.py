"""Panoptic post-processing against Mask2Former's rule, re-stated here from its description.

``MaskFormer.panoptic_inference`` (facebookresearch/Mask2Former, ``maskformer_model.py``) keeps queries whose
best class probability exceeds the object threshold, gives each pixel to the kept query with the highest
``score * mask_prob``, and, visiting the kept queries in query order, skips a query unless

    mask_area = |owner == q| (no probability test)    original_area = |mask_prob >= 0.5|
    painted = (owner == q) & (mask_prob >= 0.5)
    mask_area > 0, original_area > 0, |painted| > 0 and mask_area / original_area >= overlap_threshold;

a survivor paints ``painted``; stuff queries of an already painted class join that class's segment. Here the
score is the factored ``max_k p(k) * p(object)``. The function below is written from that description alone;
segment ids may differ (omtseg visits queries by score), so the tests compare partitions.
"""

from __future__ import annotations

import torch

from omtseg.modeling.postprocess import panoptic_inference, query_class_scores


def reference_partition(
    class_logits: torch.Tensor,
    objectness_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    is_thing: tuple[bool, ...],
    object_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> set[tuple[int, frozenset[int]]]:
    """The reference rule's segments as {(class, flat pixel indices)}."""
    scores, labels = query_class_scores(class_logits, objectness_logits).max(-1)
    kept = [q for q in range(len(scores)) if scores[q] > object_threshold]
    if not kept:
        return set()
    probs = mask_logits[kept].float().sigmoid()
    owner = (scores[kept][:, None, None] * probs).argmax(0).flatten()
    pixels_of: dict[int, set[int]] = {}  # segment key -> pixels
    label_of: dict[int, int] = {}
    stuff_key: dict[int, int] = {}
    for k, q in enumerate(kept):
        label = int(labels[q])
        inside = probs[k].flatten() >= 0.5
        mask_area = int((owner == k).sum())
        original_area = int(inside.sum())
        painted = set(((owner == k) & inside).nonzero().flatten().tolist())
        if mask_area == 0 or original_area == 0 or not painted:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not is_thing[label] and label in stuff_key:
            pixels_of[stuff_key[label]] |= painted
            continue
        key = len(pixels_of)
        if not is_thing[label]:
            stuff_key[label] = key
        pixels_of[key], label_of[key] = painted, label
    return {(label_of[key], frozenset(pixels)) for key, pixels in pixels_of.items()}


def omtseg_partition(
    class_logits: torch.Tensor,
    objectness_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    is_thing: tuple[bool, ...],
) -> set[tuple[int, frozenset[int]]]:
    result = panoptic_inference(class_logits, objectness_logits, mask_logits, is_thing=is_thing)
    flat = result.id_map.flatten()
    out = set()
    for seg in result.segments:
        pixels = frozenset((flat == seg.id).nonzero().flatten().tolist())
        assert len(pixels) == seg.area
        out.add((seg.label, pixels))
    assert int((flat > 0).sum()) == sum(seg.area for seg in result.segments)
    return out


def random_case(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confident queries over overlapping smooth masks on a 12x16 output: all pass the 0.8 score threshold,
    and most masks have unsure pixels that another query wins (where the two overlap tests disagree)."""
    num_queries, num_classes = 5, 4
    class_logits = torch.randn(num_queries, num_classes, generator=generator)
    best = torch.randint(num_classes, (num_queries,), generator=generator)
    class_logits[torch.arange(num_queries), best] += 6.0
    objectness = torch.randn(num_queries, generator=generator) + 4.0
    coarse = 3.0 * torch.randn(1, num_queries, 3, 4, generator=generator) - 2.0  # (1, Q, 3, 4)
    mask_logits = torch.nn.functional.interpolate(coarse, size=(12, 16), mode="bilinear")[0]  # (Q, H, W)
    return class_logits, objectness, mask_logits


def test_panoptic_partition_equals_mask2former_rule_on_random_cases() -> None:
    generator = torch.Generator().manual_seed(0)
    is_thing = (True, False, True, False)
    differing, nonempty = 0, 0
    for _ in range(200):
        case = random_case(generator)
        expected = reference_partition(*case, is_thing)
        nonempty += bool(expected)
        differing += omtseg_partition(*case, is_thing) != expected
    assert nonempty > 150  # the cases exercise the rule, not the empty output
    assert differing == 0


def test_query_winning_low_probability_pixels_survives_as_in_mask2former() -> None:
    # Query 1 wins row 2 (sure) and row 3 (unsure, p < 0.5, so not painted): 8 won pixels for an 8-pixel
    # mask, so Mask2Former keeps it, although only 4 of its 8 sure pixels show (4 / 8 < 0.8).
    class_logits = torch.tensor([[12.0, 0.0], [0.0, 12.0]])
    objectness = torch.tensor([10.0, 9.0])
    mask_logits = torch.full((2, 4, 4), -10.0)
    mask_logits[0, :2] = 10.0  # query 0: top half, the higher score
    mask_logits[1, 1:3, :] = 10.0  # query 1: rows 1-2, row 1 under query 0
    mask_logits[1, 3, :] = -1.0  # query 1's unsure bottom row beats query 0's -10 there
    is_thing = (True, True)
    result = panoptic_inference(class_logits, objectness, mask_logits, is_thing=is_thing)
    assert [(s.label, s.area) for s in result.segments] == [(0, 8), (1, 4)]
    assert (result.id_map[2] == 2).all() and (result.id_map[3] == 0).all()
    assert omtseg_partition(class_logits, objectness, mask_logits, is_thing) == reference_partition(
        class_logits, objectness, mask_logits, is_thing
    )
