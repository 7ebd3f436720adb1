"""Inference post-processing: raw head outputs of one image to panoptic, semantic and instance results.

Scores factor as in training: a query's score for class k is
``softmax(class_logits)[k] * sigmoid(objectness)``, the analogue of Mask2Former's softmax over K classes +
"no object". Mask2Former keeps a query for panoptic output when its best class probability (which already
includes "not no-object") exceeds ``object_mask_threshold`` 0.8; here the same 0.8 applies to the product
``max_k p(k) * p(object)``.

All functions are pure and work on one image; :func:`image_result` maps mask logits from the padded stride-4
canvas back to the original image (crop the padding, resize, undo the flip) before calling them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.types import ImageInfo, ImageResult, InstanceResult, PanopticResult, PanopticSegment

TASKS = ("panoptic", "semantic", "instance")


def query_class_scores(class_logits: Tensor, objectness_logits: Tensor) -> Tensor:
    """(Q, K) ``p(class) * p(object)`` from class logits (Q, K) and objectness logits (Q,)."""
    return class_logits.float().softmax(-1) * objectness_logits.float().sigmoid()[:, None]


def masks_to_original(mask_logits: Tensor, *, canvas_hw: tuple[int, int], info: ImageInfo) -> Tensor:
    """Mask logits on the padded canvas to the original image.

    Args:
        mask_logits: (Q, h, w) logits covering the padded input canvas (any stride).
        canvas_hw: (H, W) of the padded input the model saw.
        info: ``resized_size`` is the unpadded content at the top-left of the canvas; ``orig_size`` the
            target size; ``flipped`` undoes a horizontal flip.

    Returns:
        (Q, H0, W0) float logits.
    """
    rh, rw = info.resized_size
    if rh > canvas_hw[0] or rw > canvas_hw[1]:
        raise ValueError(f"ImageInfo.resized_size {info.resized_size} exceeds the model input {canvas_hw}.")
    x = mask_logits.float()[None]
    x = F.interpolate(x, size=canvas_hw, mode="bilinear", align_corners=False)[..., :rh, :rw]
    x = F.interpolate(x, size=tuple(info.orig_size), mode="bilinear", align_corners=False)[0]
    return x.flip(-1) if info.flipped else x


def panoptic_inference(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor,
    *,
    is_thing: Sequence[bool],
    object_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> PanopticResult:
    """Non-overlapping panoptic segments (Mask2Former's rule with factored scores).

    Queries with ``max_k p(k) * p(object) > object_threshold`` are kept; each pixel goes to the kept query
    with the highest ``score * mask_prob``, and stays void unless that query's mask probability is >= 0.5.
    A query is dropped as mostly hidden when the pixels it wins (``owner == q``, whatever their probability)
    are fewer than ``overlap_threshold`` times its own mask (``mask_prob >= 0.5``), or when it paints nothing:
    the numerator and denominator of Mask2Former's ``MaskFormer.panoptic_inference``, so the same queries
    survive. The survivors paint ``(owner == q) & (mask_prob >= 0.5)``; since owners are disjoint, visiting
    them by descending score (rather than Mask2Former's query order) changes only the segment ids. Stuff
    queries of one class merge into one segment (keeping the first, highest, score); thing queries stay
    separate instances. Segment ids count from 1.

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W) at the output size.
        is_thing: K flags.
        object_threshold: minimum query score.
        overlap_threshold: minimum ratio of the pixels a query wins to its own mask's.

    Returns:
        The result with ``id_map`` (H, W) int32.
    """
    h, w = mask_logits.shape[-2:]
    id_map = torch.zeros(h, w, dtype=torch.int32, device=mask_logits.device)
    scores, labels = query_class_scores(class_logits, objectness_logits).max(-1)  # (Q,)
    keep = (scores > object_threshold).nonzero().squeeze(1)
    if keep.numel() == 0:
        return PanopticResult(id_map=id_map, segments=[])
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    scores, labels = scores[keep], labels[keep]
    mask_probs = mask_logits[keep].float().sigmoid()  # (Qk, H, W)
    owner = (scores[:, None, None] * mask_probs).argmax(0)  # (H, W) index into kept queries
    segments: list[PanopticSegment] = []
    stuff_segment: dict[int, PanopticSegment] = {}
    for i in range(keep.numel()):
        won = owner == i
        own = mask_probs[i] >= 0.5
        own_area = int(own.sum())
        visible = won & own
        visible_area = int(visible.sum())
        if own_area == 0 or visible_area == 0 or int(won.sum()) / own_area < overlap_threshold:
            continue
        label = int(labels[i])
        thing = bool(is_thing[label])
        if not thing and label in stuff_segment:
            seg = stuff_segment[label]
            seg.area += visible_area
        else:
            seg = PanopticSegment(
                id=len(segments) + 1, label=label, is_thing=thing, score=float(scores[i]), area=visible_area
            )
            segments.append(seg)
            if not thing:
                stuff_segment[label] = seg
        id_map[visible] = seg.id
    return PanopticResult(id_map=id_map, segments=segments)


def semantic_inference(class_logits: Tensor, objectness_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-pixel class scores: sum over queries of ``p(k) * p(object) * mask_prob``.

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W).

    Returns:
        (K, H, W) float scores.
    """
    scores = query_class_scores(class_logits, objectness_logits)
    return torch.einsum("qk,qhw->khw", scores, mask_logits.float().sigmoid())


def instance_inference(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor,
    *,
    is_thing: Sequence[bool] | None = None,
    top_k: int = 100,
) -> InstanceResult:
    """The ``top_k`` best (query, class) pairs as instances, scored by class score times mask quality.

    A query may appear with several classes. When ``is_thing`` is given only thing classes compete (filtered
    before the top-k, so stuff classes do not use up the budget). The final score multiplies
    ``p(k) * p(object)`` by the mean mask probability inside the binary mask (``logit > 0``).

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W).
        is_thing: K flags, or None to keep every class.
        top_k: maximum instances.

    Returns:
        Masks (M, H, W) bool, labels (M,) int64, scores (M,) float with M <= top_k, by descending class score.
    """
    scores = query_class_scores(class_logits, objectness_logits)  # (Q, K)
    num_classes = scores.shape[1]
    if is_thing is not None:
        things = torch.as_tensor(list(is_thing), dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(~things[None], -1.0)
    flat = scores.flatten()
    num_valid = int((flat >= 0).sum())
    top = flat.topk(min(top_k, num_valid))
    query_idx, labels = top.indices // num_classes, top.indices % num_classes
    logits = mask_logits[query_idx].float()  # (M, H, W)
    masks = logits > 0
    mask_quality = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return InstanceResult(masks=masks, labels=labels, scores=top.values * mask_quality)


def image_result(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor,
    *,
    info: ImageInfo,
    canvas_hw: tuple[int, int],
    is_thing: Sequence[bool],
    tasks: Sequence[str] = TASKS,
    object_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    top_k: int = 100,
) -> ImageResult:
    """Every requested result of one image at its original size.

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, h, w) covering the padded canvas.
        info: size and flip bookkeeping of the image.
        canvas_hw: (H, W) of the padded model input.
        is_thing: K flags of the vocabulary.
        tasks: any of "panoptic", "semantic", "instance".
        object_threshold: see :func:`panoptic_inference`.
        overlap_threshold: see :func:`panoptic_inference`.
        top_k: see :func:`instance_inference`.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"Unknown tasks {sorted(unknown)}; choose from {TASKS}.")
    if len(is_thing) != class_logits.shape[-1]:
        raise ValueError(f"is_thing has {len(is_thing)} flags for {class_logits.shape[-1]} classes.")
    masks = masks_to_original(mask_logits, canvas_hw=canvas_hw, info=info)
    result = ImageResult(info=info)
    if "panoptic" in tasks:
        result.panoptic = panoptic_inference(
            class_logits,
            objectness_logits,
            masks,
            is_thing=is_thing,
            object_threshold=object_threshold,
            overlap_threshold=overlap_threshold,
        )
    if "semantic" in tasks:
        result.semantic = semantic_inference(class_logits, objectness_logits, masks)
    if "instance" in tasks:
        result.instances = instance_inference(
            class_logits, objectness_logits, masks, is_thing=is_thing, top_k=top_k
        )
    return result
