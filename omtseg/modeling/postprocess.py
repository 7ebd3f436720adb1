"""Inference post-processing: raw head outputs of one image to panoptic, semantic and instance results.

Scores factor as in training: a query's score for class k is
``softmax(class_logits)[k] * sigmoid(objectness)``, the analogue of Mask2Former's softmax over K classes +
"no object". Mask2Former keeps a query for panoptic output when its best class probability (which already
includes "not no-object") exceeds ``object_mask_threshold`` 0.8; here the same 0.8 applies to the product
``max_k p(k) * p(object)``.

Memory is bounded by the mask resolution and one block of maps at the output size, whatever the image
size, the number of queries Q or of classes K: :class:`OutputMasks` keeps the (Q, h, w) mask logits of the
padded stride-4 canvas and maps a few queries at a time to the original image (crop the padding, resize,
undo the flip) when a task asks for them. Panoptic reduces the kept queries to a running per-pixel owner;
instances upsample only the top-k queries; semantic scores are computed at mask resolution and reduced to a
per-pixel best class over blocks of classes. No (Q or K, H0, W0) float tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.types import (
    ImageInfo,
    ImageResult,
    InstanceResult,
    PanopticResult,
    PanopticSegment,
    SemanticResult,
)

TASKS = ("panoptic", "semantic", "instance")

BLOCK_ELEMENTS = 1 << 24
"""Floats (64 MiB) of output-size maps held at once; blocks of queries or classes are sized to fit it."""


def query_class_scores(class_logits: Tensor, objectness_logits: Tensor) -> Tensor:
    """(Q, K) ``p(class) * p(object)`` from class logits (Q, K) and objectness logits (Q,)."""
    return class_logits.float().softmax(-1) * objectness_logits.float().sigmoid()[:, None]


def masks_to_original(mask_logits: Tensor, *, canvas_hw: tuple[int, int], info: ImageInfo) -> Tensor:
    """Maps on the padded canvas (mask logits, or any per-channel scores) to the original image.

    Args:
        mask_logits: (C, h, w) maps covering the padded input canvas (any stride).
        canvas_hw: (H, W) of the padded input the model saw.
        info: ``resized_size`` is the unpadded content at the top-left of the canvas; ``orig_size`` the
            target size; ``flipped`` undoes a horizontal flip.

    Returns:
        (C, H0, W0) float maps.
    """
    return content_to_original(canvas_to_content(mask_logits, canvas_hw=canvas_hw, info=info), info=info)


def canvas_to_content(maps: Tensor, *, canvas_hw: tuple[int, int], info: ImageInfo) -> Tensor:
    """(C, h, w) maps on the padded canvas -> (C, rh, rw) float on the unpadded content, at the model
    input's resolution (``info.resized_size``)."""
    rh, rw = info.resized_size
    if rh > canvas_hw[0] or rw > canvas_hw[1]:
        raise ValueError(f"ImageInfo.resized_size {info.resized_size} exceeds the model input {canvas_hw}.")
    x = F.interpolate(maps.float()[None], size=canvas_hw, mode="bilinear", align_corners=False)
    return x[0, :, :rh, :rw]


def content_to_original(maps: Tensor, *, info: ImageInfo) -> Tensor:
    """(C, rh, rw) maps on the content -> (C, H0, W0) at the original size, the flip undone."""
    x = F.interpolate(maps[None], size=tuple(info.orig_size), mode="bilinear", align_corners=False)[0]
    return x.flip(-1) if info.flipped else x


class OutputMasks:
    """Mask logits of one image, brought to the output size a block of queries at a time.

    Args:
        mask_logits: (Q, h, w); on the padded canvas when ``info`` is given, else already at the output size.
        canvas_hw: (H, W) of the padded model input (with ``info``).
        info: the image's size and flip bookkeeping; None when ``mask_logits`` are at the output size.
    """

    def __init__(
        self, mask_logits: Tensor, *, canvas_hw: tuple[int, int] | None = None, info: ImageInfo | None = None
    ) -> None:
        if (canvas_hw is None) != (info is None):
            raise ValueError("Give both canvas_hw and info (canvas masks), or neither (output-size masks).")
        self.logits = mask_logits
        self.canvas_hw = canvas_hw
        self.info = info
        self.size: tuple[int, int] = (
            tuple(mask_logits.shape[-2:]) if info is None else tuple(info.orig_size)  # type: ignore[assignment]
        )

    def __len__(self) -> int:
        return self.logits.shape[0]

    def to_content(self, maps: Tensor) -> Tensor:
        """(C, h, w) maps on the logits' grid -> (C, rh, rw) float on the content at the model input's
        resolution (the output grid itself for output-size masks)."""
        if self.info is None:
            return maps.float()
        assert self.canvas_hw is not None
        return canvas_to_content(maps, canvas_hw=self.canvas_hw, info=self.info)

    def content_to_output(self, maps: Tensor) -> Tensor:
        """(C, rh, rw) maps from :meth:`to_content` -> (C, H0, W0) at the output size."""
        return maps if self.info is None else content_to_original(maps, info=self.info)

    def to_output(self, maps: Tensor) -> Tensor:
        """(C, h, w) maps on the logits' grid -> (C, H0, W0) float at the output size."""
        return self.content_to_output(self.to_content(maps))

    def block_size(self) -> int:
        """Maps per block so that a block at the output size (and on the canvas, resized on the way) stays
        within :data:`BLOCK_ELEMENTS` floats."""
        pixels = self.size[0] * self.size[1]
        if self.canvas_hw is not None:
            pixels = max(pixels, self.canvas_hw[0] * self.canvas_hw[1])
        return max(1, BLOCK_ELEMENTS // max(1, pixels))

    def blocks(self, queries: Tensor) -> Iterator[tuple[int, Tensor]]:
        """``(start, logits)`` per block of ``queries`` (indices into Q): logits (n, H0, W0) float of
        ``queries[start : start + n]``, a new tensor each (indexing copies), free to modify in place."""
        step = self.block_size()
        for start in range(0, len(queries), step):
            yield start, self.to_output(self.logits[queries[start : start + step]])


def _as_output_masks(masks: Tensor | OutputMasks) -> OutputMasks:
    return masks if isinstance(masks, OutputMasks) else OutputMasks(masks)


def panoptic_inference(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor | OutputMasks,
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

    Only kept queries are brought to the output size, a block at a time: the owner, its score and whether
    the owner's mask covers the pixel are kept per pixel, which is all the rule needs.

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W) at the output size, or :class:`OutputMasks`.
        is_thing: K flags.
        object_threshold: minimum query score.
        overlap_threshold: minimum ratio of the pixels a query wins to its own mask's.

    Returns:
        The result with ``id_map`` (H, W) int32.
    """
    masks = _as_output_masks(mask_logits)
    h, w = masks.size
    device = masks.logits.device
    scores, labels = query_class_scores(class_logits, objectness_logits).max(-1)  # (Q,)
    keep = (scores > object_threshold).nonzero().squeeze(1)
    if keep.numel() == 0:
        return PanopticResult(id_map=torch.zeros(h, w, dtype=torch.int32, device=device), segments=[])
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    scores, labels = scores[keep], labels[keep]
    best = torch.empty(0)  # (H, W) the owner's score * mask_prob
    owner = torch.empty(0, dtype=torch.int32)  # (H, W) index into kept queries
    owner_covers = torch.empty(0, dtype=torch.bool)  # (H, W) the owner's mask_prob >= 0.5
    own_area = torch.zeros(keep.numel(), dtype=torch.int64, device=device)
    for start, logits in masks.blocks(keep):
        n = len(logits)
        probs = logits.sigmoid_()  # (n, H, W)
        covers = probs >= 0.5
        own_area[start : start + n] = covers.flatten(1).sum(1)
        weighted = probs.mul_(scores[start : start + n, None, None])  # score * mask_prob, in place
        block_best, block_owner = _block_max(weighted, start)
        if block_owner is None:
            block_covers = covers[0]
        else:
            block_covers = covers.gather(0, (block_owner - start).long()[None])[0]
        if start == 0:
            best, owner_covers = block_best, block_covers
            owner = torch.zeros_like(best, dtype=torch.int32) if block_owner is None else block_owner
            continue
        # Strictly greater: on ties the earlier (higher-scored) query keeps the pixel, as argmax does.
        wins = block_best > best
        torch.where(wins, block_best, best, out=best)
        torch.where(wins, block_covers, owner_covers, out=owner_covers)
        if block_owner is None:
            owner.masked_fill_(wins, start)
        else:
            torch.where(wins, block_owner, owner, out=owner)
        del wins, probs, weighted, block_best
    won_area = torch.bincount(owner.flatten(), minlength=keep.numel())
    visible_area = torch.bincount(owner[owner_covers], minlength=keep.numel())
    segments: list[PanopticSegment] = []
    stuff_segment: dict[int, PanopticSegment] = {}
    segment_of = torch.zeros(keep.numel(), dtype=torch.int32, device=device)
    for i in range(keep.numel()):
        own, visible = int(own_area[i]), int(visible_area[i])
        if own == 0 or visible == 0 or int(won_area[i]) / own < overlap_threshold:
            continue
        label = int(labels[i])
        thing = bool(is_thing[label])
        if not thing and label in stuff_segment:
            seg = stuff_segment[label]
            seg.area += visible
        else:
            seg = PanopticSegment(id=len(segments) + 1, label=label, is_thing=thing, score=float(scores[i]),
                                  area=visible)  # fmt: skip
            segments.append(seg)
            if not thing:
                stuff_segment[label] = seg
        segment_of[i] = seg.id
    id_map = segment_of[owner].masked_fill_(~owner_covers, 0)
    return PanopticResult(id_map=id_map, segments=segments)


def _block_max(maps: Tensor, start: int) -> tuple[Tensor, Tensor | None]:
    """Per-pixel max over a block of maps (n, H, W) and its index + ``start`` as int32 (first on ties);
    None for the index of a one-map block, whose max is the map itself (no copy)."""
    if len(maps) == 1:
        return maps[0], None
    values, index = maps.max(0)
    return values, index.to(torch.int32).add_(start)


def _possible_winners(class_scores: Callable[[Tensor], Tensor], num_classes: int, step: int) -> Tensor:
    """The classes (ascending indices) that can be the best anywhere once resized, exactly.

    A bilinear resize (no antialiasing) makes each output value a convex combination of a 2 x 2 window of
    the input, so class k can win a pixel of window w only if its largest value in w reaches the largest
    smallest value of any class in w. Classes that reach it in no window are skipped (where no query is
    sure of a pixel, many classes score alike and few are). ``class_scores(indices)`` gives (k, rh, rw)
    scores; blocks of ``step``.
    """

    def windows(block: Tensor) -> Tensor:  # (k, rh, rw) -> (k, rh + 1, rw + 1), edge pixels repeated
        return F.pad(block[None], (0, 1, 0, 1), mode="replicate")[0]

    blocks = [torch.arange(s, min(s + step, num_classes)) for s in range(0, num_classes, step)]
    floor = None  # (rh, rw) per window, the best score some class is sure to reach
    for block in blocks:
        low = (-F.max_pool2d(-windows(class_scores(block)), 2, stride=1)).amax(0)  # best window minimum
        floor = low if floor is None else torch.maximum(floor, low)
    assert floor is not None
    # Rounding in the resize moves values by ~1e-7 relative: the margin keeps every possible winner.
    floor = floor - 1e-5 * floor.abs() - 1e-12
    keep = [block[(F.max_pool2d(windows(class_scores(block)), 2, stride=1) >= floor).flatten(1).any(1)]
            for block in blocks]  # fmt: skip
    return torch.cat(keep)


def semantic_inference(
    class_logits: Tensor, objectness_logits: Tensor, mask_logits: Tensor | OutputMasks
) -> SemanticResult:
    """Per-pixel best class of ``sum over queries of p(k) * p(object) * mask_prob``.

    As Mask2Former's semantic inference without ``sem_seg_postprocess_before_inference``: mask logits are
    upsampled to the model input (the canvas content), the class scores computed there, a block of classes
    at a time, and each block's scores resized to the output size and reduced to the running best class
    per pixel; classes that cannot win any pixel are skipped, exactly (:func:`_possible_winners`). Memory
    holds the (Q, rh, rw) mask probabilities at the model input's resolution and one block of classes at
    the output size, however large K and the image are. (Before, omtseg resized the mask logits to the
    output size first, a (Q, H0, W0) and a (K, H0, W0) tensor: labels differ from those only near class
    boundaries, by the order of a resize and a sigmoid.)

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W) at the output size, or :class:`OutputMasks`.

    Returns:
        ``labels`` (H0, W0) int32 class indices (the first best on ties) and their ``scores`` (H0, W0).
    """
    masks = _as_output_masks(mask_logits)
    scores = query_class_scores(class_logits, objectness_logits)  # (Q, K)
    probs = masks.to_content(masks.logits).sigmoid()  # (Q, rh, rw); to_content may return the input
    grid = probs.shape[-2:]
    probs = probs.flatten(1)

    def class_scores(classes: Tensor) -> Tensor:
        return (scores[:, classes].T @ probs).unflatten(1, grid)  # (k, rh, rw)

    classes = _possible_winners(class_scores, scores.shape[1], max(1, BLOCK_ELEMENTS // probs.shape[1]))
    step = masks.block_size()
    best = position = torch.empty(0)  # (H0, W0) best score and its class's position in `classes`
    for start in range(0, len(classes), step):
        block_best, block_position = _block_max(
            masks.content_to_output(class_scores(classes[start : start + step])), start
        )  # (H0, W0)
        if start == 0:
            best = block_best
            zeros = torch.zeros_like(best, dtype=torch.int32)
            position = zeros if block_position is None else block_position
            continue
        wins = block_best > best
        torch.where(wins, block_best, best, out=best)
        if block_position is None:
            position.masked_fill_(wins, start)
        else:
            torch.where(wins, block_position, position, out=position)
        del wins, block_best, block_position
    labels = classes.to(device=position.device, dtype=torch.int32)[position]
    return SemanticResult(labels=labels, scores=best)


def instance_inference(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor | OutputMasks,
    *,
    is_thing: Sequence[bool] | None = None,
    top_k: int = 100,
) -> InstanceResult:
    """The ``top_k`` best (query, class) pairs as instances, scored by class score times mask quality.

    A query may appear with several classes. When ``is_thing`` is given only thing classes compete (filtered
    before the top-k, so stuff classes do not use up the budget). The final score multiplies
    ``p(k) * p(object)`` by the mean mask probability inside the binary mask (``logit > 0``). Only the
    chosen queries are brought to the output size, each once.

    Args:
        class_logits: (Q, K).
        objectness_logits: (Q,).
        mask_logits: (Q, H, W) at the output size, or :class:`OutputMasks`.
        is_thing: K flags, or None to keep every class.
        top_k: maximum instances.

    Returns:
        Masks (M, H, W) bool, labels (M,) int64, scores (M,) float with M <= top_k, by descending class score.
    """
    masks = _as_output_masks(mask_logits)
    scores = query_class_scores(class_logits, objectness_logits)  # (Q, K)
    num_classes = scores.shape[1]
    if is_thing is not None:
        things = torch.as_tensor(list(is_thing), dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(~things[None], -1.0)
    flat = scores.flatten()
    num_valid = int((flat >= 0).sum())
    top = flat.topk(min(top_k, num_valid))
    query_idx, labels = top.indices // num_classes, top.indices % num_classes
    queries, inverse = query_idx.unique(return_inverse=True)  # (U,), (M,)
    binary = torch.empty(len(queries), *masks.size, dtype=torch.bool, device=masks.logits.device)
    quality = torch.empty(len(queries), device=scores.device)
    for start, logits in masks.blocks(queries):
        inside = logits > 0  # (n, H, W)
        binary[start : start + len(logits)] = inside
        inner = (logits.sigmoid_() * inside).flatten(1).sum(1)
        quality[start : start + len(logits)] = inner / (inside.flatten(1).sum(1) + 1e-6)
    return InstanceResult(masks=binary[inverse], labels=labels, scores=top.values * quality[inverse])


def segment_query_ious(masks: OutputMasks, id_map: Tensor, segment_ids: Sequence[int]) -> Tensor:
    """(S, Q) IoU of each panoptic segment with each query's binary mask (``logit > 0``) at the output size.

    Args:
        masks: the image's mask logits.
        id_map: (H0, W0) segment ids of the panoptic result.
        segment_ids: the S segment ids to compare.
    """
    num = len(segment_ids)
    ids = torch.as_tensor(list(segment_ids), dtype=torch.int64, device=id_map.device)
    top_id = max(int(id_map.max()), int(ids.max()) if num else 0)
    lookup = torch.full((top_id + 1,), num, dtype=torch.int64, device=id_map.device)
    lookup[ids] = torch.arange(num, device=id_map.device)
    region = lookup[id_map.long()].flatten()  # (H0 W0) segment index, num outside every segment
    region_area = torch.bincount(region, minlength=num + 1)[:num]
    inter = torch.zeros(num, len(masks), dtype=torch.int64, device=id_map.device)
    mask_area = torch.zeros(len(masks), dtype=torch.int64, device=id_map.device)
    queries = torch.arange(len(masks), device=masks.logits.device)
    for start, logits in masks.blocks(queries):
        inside = (logits > 0).flatten(1)  # (n, H0 W0)
        mask_area[start : start + len(inside)] = inside.sum(1)
        for j, row in enumerate(inside):
            inter[:, start + j] = torch.bincount(region[row], minlength=num + 1)[:num]
    union = region_area[:, None] + mask_area[None] - inter
    return inter / union.clamp(min=1)


def batch_results(
    class_logits: Tensor,
    objectness_logits: Tensor,
    mask_logits: Tensor,
    *,
    infos: Sequence[ImageInfo],
    **kwargs: Any,
) -> list[ImageResult]:
    """:func:`image_result` of every image of a batch: logits (B, Q, K), (B, Q), (B, Q, h, w) and B infos;
    ``kwargs`` are :func:`image_result`'s (``canvas_hw``, ``is_thing``, ``tasks``, thresholds, ``top_k``)."""
    return [
        image_result(class_logits[i], objectness_logits[i], mask_logits[i], info=info, **kwargs)
        for i, info in enumerate(infos)
    ]


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
    """Every requested result of one image at its original size; tasks not requested cost nothing.

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
    masks = OutputMasks(mask_logits, canvas_hw=canvas_hw, info=info)
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
