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

from collections.abc import Iterator, Sequence

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
    owner = torch.zeros(h, w, dtype=torch.int64, device=device)  # index into kept queries
    owner_covers = torch.zeros(h, w, dtype=torch.bool, device=device)  # owner's mask_prob >= 0.5
    own_area = torch.zeros(keep.numel(), dtype=torch.int64, device=device)
    for start, logits in masks.blocks(keep):
        probs = logits.sigmoid_()  # (n, H, W)
        covers = probs >= 0.5
        own_area[start : start + len(probs)] = covers.flatten(1).sum(1)
        block_best, block_owner = (scores[start : start + len(probs), None, None] * probs).max(0)
        block_covers = covers.gather(0, block_owner[None])[0]
        if start == 0:
            best, owner, owner_covers = block_best, block_owner, block_covers
            continue
        # Strictly greater: on ties the earlier (higher-scored) query keeps the pixel, as argmax does.
        wins = block_best > best
        best = torch.where(wins, block_best, best)
        owner = torch.where(wins, block_owner + start, owner)
        owner_covers = torch.where(wins, block_covers, owner_covers)
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
    id_map = torch.where(owner_covers, segment_of[owner], 0).to(torch.int32)
    return PanopticResult(id_map=id_map, segments=segments)


def semantic_inference(
    class_logits: Tensor, objectness_logits: Tensor, mask_logits: Tensor | OutputMasks
) -> SemanticResult:
    """Per-pixel best class of ``sum over queries of p(k) * p(object) * mask_prob``.

    As Mask2Former's semantic inference without ``sem_seg_postprocess_before_inference``: mask logits are
    upsampled to the model input (the canvas content), the class scores computed there, a block of classes
    at a time, and each block's scores resized to the output size and reduced to the running best class
    per pixel. Memory holds the (Q, rh, rw) mask probabilities at the model input's resolution and one
    block of classes at the output size, however large K and the image are. (Before, omtseg resized the
    mask logits to the output size first, a (Q, H0, W0) and a (K, H0, W0) tensor: labels differ from those
    only near class boundaries, by the order of a resize and a sigmoid.)

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
    step = masks.block_size()
    best = labels = torch.empty(0)
    for start in range(0, scores.shape[1], step):
        block = (scores[:, start : start + step].T @ probs).unflatten(1, grid)  # (k, rh, rw)
        block_best, block_labels = masks.content_to_output(block).max(0)  # (H0, W0)
        if start == 0:
            best, labels = block_best, block_labels.to(torch.int32)
            continue
        wins = block_best > best
        best = torch.where(wins, block_best, best)
        labels = torch.where(wins, (block_labels + start).to(torch.int32), labels)
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
