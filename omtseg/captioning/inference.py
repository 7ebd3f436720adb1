"""Segment captioning on a trained segmenter: its features, query matching, captions for results and prompts.

The captioner reads what the frozen segmenter computes anyway: the pixel decoder's multi-scale maps and the
decoder's final query embeddings. :func:`segmenter_pass` runs one ordinary forward (or ``predict``) and keeps
both through forward hooks, so captioning costs one segmenter pass plus the mixer and the LM.

A region (a ground-truth segment in training, a predicted segment or a box at inference) is paired with the
decoder query whose predicted mask overlaps it most (IoU at the mask-feature resolution); that query's
embedding joins the caption queries, as in SCA where the segment's own query token conditions the caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.boxes import box_masks
from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, ImageResult, Predictions, Vocabulary


@dataclass
class SegmenterPass:
    """What one segmenter pass leaves for the captioner.

    Attributes:
        multi_scale: the pixel decoder's maps (B, C, h_l, w_l) at strides 32, 16, 8.
        queries: (B, Q, C) the decoder's final (normed) query embeddings.
        mask_logits: (B, Q, H/4, W/4) the final mask logits over the padded canvas.
        results: post-processed results when ``predict`` ran, else None.
    """

    multi_scale: list[Tensor]
    queries: Tensor
    mask_logits: Tensor
    results: list[ImageResult] | None


class SegmenterTap:
    """Forward hooks that keep what the segmenter computes for the captioner, while they are installed.

    Installing the tap around any segmenter call (``forward`` or ``predict``, such as a LightningModule's
    ``predict_step``) lets captions be written from that very pass instead of running the segmenter again.
    """

    def __init__(self, segmenter: OMTSeg) -> None:
        self._kept: dict[str, Any] = {}

        def keep_features(_module: Any, _inputs: Any, output: tuple[Tensor, list[Tensor]]) -> None:
            self._kept["mask_features"], self._kept["multi_scale"] = output

        def keep_queries(_module: Any, _inputs: Any, output: Tensor) -> None:
            # The decoder norms every layer's queries; the last call is the final one.
            self._kept["queries"] = output

        def keep_masks(_module: Any, _inputs: Any, output: Predictions) -> None:
            self._kept["mask_logits"] = output.mask_logits

        self._hooks = [
            segmenter.pixel_decoder.register_forward_hook(keep_features),
            segmenter.decoder.decoder_norm.register_forward_hook(keep_queries),
            segmenter.decoder.register_forward_hook(keep_masks),
        ]

    def captured(self, results: list[ImageResult] | None = None) -> SegmenterPass:
        """What the last segmenter pass left, with the results it was post-processed into (if any)."""
        if "mask_logits" not in self._kept:
            raise RuntimeError("The segmenter has not run since the tap was installed.")
        return SegmenterPass(
            multi_scale=self._kept["multi_scale"],
            queries=self._kept["queries"],
            mask_logits=self._kept["mask_logits"],
            results=results,
        )

    def remove(self) -> None:
        """Uninstall the hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> SegmenterTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@torch.no_grad()
def segmenter_pass(
    segmenter: OMTSeg, images: Tensor, vocabulary: Vocabulary, batch: Batch | None = None
) -> SegmenterPass:
    """Run the segmenter once and keep its multi-scale features and final query embeddings.

    Args:
        segmenter: the trained segmenter (its weights are not changed).
        images: (B, 3, H, W) uint8 or float 0-255.
        vocabulary: the classes to segment with.
        batch: when given, ``segmenter.predict(batch, ("panoptic",))`` runs instead of ``forward`` and its
            results are kept (``images`` and ``vocabulary`` must be the batch's).
    """
    with SegmenterTap(segmenter) as tap:
        if batch is None:
            segmenter(images, vocabulary)
            return tap.captured()
        return tap.captured(segmenter.predict(batch, tasks=("panoptic",)))


def match_queries(mask_logits: Tensor, masks: Tensor, segment_batch_index: Tensor) -> Tensor:
    """Per region, the query whose predicted mask has the highest IoU with it.

    Args:
        mask_logits: (B, Q, h, w) the segmenter's mask logits.
        masks: (S, H, W) bool regions on the same padded canvas (any resolution).
        segment_batch_index: (S,) image of each region.

    Returns:
        (S,) long query indices.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=mask_logits.device)
    cover = F.adaptive_avg_pool2d(masks[:, None].float(), (mask_logits.shape[-2], mask_logits.shape[-1]))[
        :, 0
    ]  # (S, h, w) share
    region = cover >= 0.5
    tiny = ~region.flatten(1).any(1)
    region[tiny] = cover[tiny] > 0  # a region smaller than a cell keeps the cells it touches
    pred = mask_logits[segment_batch_index] > 0  # (S, Q, h, w)
    inter = (pred & region[:, None]).flatten(2).sum(-1).float()
    union = (pred | region[:, None]).flatten(2).sum(-1).float().clamp(min=1)
    return (inter / union).argmax(1)


def _to_canvas(mask: Tensor, info: ImageInfo, canvas: tuple[int, int]) -> Tensor:
    """(H0, W0) bool at the original size -> (H, W) bool on the padded canvas the segmenter saw."""
    h, w = info.resized_size
    out = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0] > 0.5
    if info.flipped:
        out = out.flip(-1)
    return F.pad(out, (0, canvas[1] - w, 0, canvas[0] - h))


def _box_to_canvas(box: Sequence[float], info: ImageInfo) -> Tensor:
    """(4,) ``x0, y0, x1, y1`` in original pixels -> the same box on the resized (and flipped) image."""
    (h0, w0), (h, w) = info.orig_size, info.resized_size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 <= x1 and y0 <= y1):
        raise ValueError(f"Box {list(box)} is not x0, y0, x1, y1 with x0 <= x1 and y0 <= y1.")
    sx, sy = w / w0, h / h0
    b = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
    if info.flipped:
        b = [w - b[2], b[1], w - b[0], b[3]]
    return torch.tensor([b])


def _canvas(images: Tensor) -> tuple[int, int]:
    h, w = images.shape[-2:]
    return h + (-h % 32), w + (-w % 32)


@torch.no_grad()
def caption_results(
    segmenter: OMTSeg,
    captioner: SegmentCaptioner,
    batch: Batch,
    *,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    chunk_size: int = 32,
) -> list[ImageResult]:
    """Segment a batch and caption every panoptic segment (``PanopticSegment.caption``).

    Args:
        segmenter: the trained segmenter.
        captioner: the trained captioner (built for the segmenter's feature and query widths).
        batch: images, infos and the vocabulary, as ``segmenter.predict`` takes them.
        max_new_tokens: caption length limit in tokens.
        num_beams: 1 for greedy decoding, more for beam search.
        chunk_size: segments captioned at once (the mixer holds a copy of the image tokens per segment).

    Returns:
        The panoptic results, each segment with its caption.
    """
    tap = segmenter_pass(segmenter, batch.images, batch.vocabulary, batch)
    assert tap.results is not None
    return caption_segments(
        tap, captioner, batch, max_new_tokens=max_new_tokens, num_beams=num_beams, chunk_size=chunk_size
    )


@torch.no_grad()
def caption_segments(
    tap: SegmenterPass,
    captioner: SegmentCaptioner,
    batch: Batch,
    *,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    chunk_size: int = 32,
) -> list[ImageResult]:
    """Caption every panoptic segment of the results of one segmenter pass (``PanopticSegment.caption``).

    Args:
        tap: the pass, with its ``results`` at the batch's original sizes (those without panoptic output are
            left as they are).
        captioner, batch, max_new_tokens, num_beams, chunk_size: as in :func:`caption_results`.

    Returns:
        ``tap.results``, each panoptic segment with its caption.
    """
    if tap.results is None:
        raise ValueError("caption_segments needs the pass's post-processed results (SegmenterTap.captured).")
    canvas = _canvas(batch.images)
    masks, index = [], []
    for i, result in enumerate(tap.results):
        panoptic = result.panoptic
        if panoptic is None:
            continue
        for seg in panoptic.segments:
            masks.append(_to_canvas(panoptic.id_map == seg.id, result.info, canvas))
            index.append(i)
    if not masks:
        return tap.results
    all_masks = torch.stack(masks)  # (S, H, W)
    all_index = torch.tensor(index, device=all_masks.device)
    queries = match_queries(tap.mask_logits, all_masks, all_index)
    captions: list[str] = []
    for start in range(0, len(masks), chunk_size):
        part = slice(start, start + chunk_size)
        captions += captioner.generate(
            tap.multi_scale,
            all_masks[part],
            all_index[part],
            tap.queries[all_index[part], queries[part]],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
        )
    it = iter(captions)
    for result in tap.results:
        for seg in result.panoptic.segments if result.panoptic is not None else []:
            seg.caption = next(it)
    return tap.results


@torch.no_grad()
def caption_prompt(
    segmenter: OMTSeg,
    captioner: SegmentCaptioner,
    batch: Batch,
    *,
    box: Sequence[float] | None = None,
    point: Sequence[float] | None = None,
    caption_box: bool = False,
    min_iou: float = 0.5,
    max_new_tokens: int = 20,
    num_beams: int = 1,
) -> tuple[str, int | None]:
    """Caption what a box or a point designates in a one-image batch.

    A point selects the predicted segment under it (the nearest one when it falls on void). A box selects the
    predicted segment of highest IoU with it; when ``caption_box`` is set, or no segment reaches ``min_iou``,
    the box region itself is captioned.

    Args:
        segmenter, captioner: as in :func:`caption_results`.
        batch: one image.
        box: ``x0, y0, x1, y1`` in pixels of the original image.
        point: ``x, y`` in pixels of the original image.
        caption_box: caption the box region even when a segment matches it.
        min_iou: IoU a segment needs to stand for the box.
        max_new_tokens, num_beams: decoding settings.

    Returns:
        The caption and the id of the captioned segment (None when the box region itself was captioned).
    """
    if len(batch) != 1 or (box is None) == (point is None):
        raise ValueError("Give a one-image batch and exactly one of box= or point=.")
    tap = segmenter_pass(segmenter, batch.images, batch.vocabulary, batch)
    assert tap.results is not None and tap.results[0].panoptic is not None
    panoptic, info = tap.results[0].panoptic, batch.infos[0]
    canvas = _canvas(batch.images)
    id_map = panoptic.id_map
    chosen: int | None = None
    if point is not None:
        x, y = int(point[0]), int(point[1])
        if not (0 <= x < id_map.shape[1] and 0 <= y < id_map.shape[0]):
            raise ValueError(
                f"Point {list(point)} lies outside the {id_map.shape[1]}x{id_map.shape[0]} image."
            )
        chosen = int(id_map[y, x]) or None
        if chosen is None and panoptic.segments:
            ys, xs = torch.nonzero(id_map > 0, as_tuple=True)
            nearest = ((ys - y) ** 2 + (xs - x) ** 2).argmin()
            chosen = int(id_map[ys[nearest], xs[nearest]])
        if chosen is None:
            raise ValueError("The segmenter found no segment in this image; prompt with a box instead.")
        region = _to_canvas(id_map == chosen, info, canvas)
    else:
        assert box is not None
        (h, w), resized = info.resized_size, _box_to_canvas(box, info)
        region = F.pad(box_masks(resized, (h, w))[0], (0, canvas[1] - w, 0, canvas[0] - h))
        if not caption_box and panoptic.segments:
            h0, w0 = info.orig_size
            original = box_masks(torch.tensor([list(map(float, box))]), (h0, w0))[0]
            ious = [
                float((original & (id_map == s.id)).sum()) / float((original | (id_map == s.id)).sum())
                for s in panoptic.segments
            ]
            best = max(range(len(ious)), key=ious.__getitem__)
            if ious[best] >= min_iou:
                chosen = panoptic.segments[best].id
                region = _to_canvas(id_map == chosen, info, canvas)
    masks = region[None].to(tap.mask_logits.device)
    index = torch.zeros(1, dtype=torch.long, device=masks.device)
    query = None
    if chosen is not None:
        query = tap.queries[index, match_queries(tap.mask_logits, masks, index)]
    caption = captioner.generate(
        tap.multi_scale, masks, index, query, max_new_tokens=max_new_tokens, num_beams=num_beams
    )[0]
    return caption, chosen


@torch.no_grad()
def caption_masks(
    segmenter: OMTSeg,
    captioner: SegmentCaptioner,
    batch: Batch,
    masks: Tensor,
    *,
    max_new_tokens: int = 20,
    num_beams: int = 1,
) -> list[str]:
    """Caption given regions of a one-image batch, each with the query whose mask overlaps it most.

    Args:
        segmenter, captioner: as in :func:`caption_results`.
        batch: one image.
        masks: (S, H0, W0) bool regions at the image's original size.
        max_new_tokens, num_beams: decoding settings.

    Returns:
        S captions.
    """
    info = batch.infos[0]
    if len(batch) != 1 or masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(info.orig_size):
        raise ValueError(
            f"Give a one-image batch and (S, H, W) masks at the image's size {tuple(info.orig_size)}; "
            f"got {len(batch)} images and masks of shape {tuple(masks.shape)}."
        )
    if masks.shape[0] == 0:
        return []
    tap = segmenter_pass(segmenter, batch.images, batch.vocabulary)
    canvas = _canvas(batch.images)
    regions = torch.stack([_to_canvas(m.bool(), info, canvas) for m in masks]).to(tap.mask_logits.device)
    index = torch.zeros(len(regions), dtype=torch.long, device=regions.device)
    query = tap.queries[index, match_queries(tap.mask_logits, regions, index)]
    return captioner.generate(
        tap.multi_scale, regions, index, query, max_new_tokens=max_new_tokens, num_beams=num_beams
    )
