"""Prompted captioning: boxes, points and masks of one image captioned from a single segmenter pass.

As in SCA's app, a prompt designates a region and gets a caption; many prompts share one segmenter pass
(:class:`~omtseg.captioning.inference.SegmenterTap`) and the captioner runs on all regions in chunks.
Without prompts every predicted panoptic segment is captioned ("everything" mode).

How a prompt becomes a region (all at the image's own size):

- box: the predicted segment of highest IoU with the box when it reaches ``min_iou``, else the box itself;
- point: the predicted segment under it; on void, the mask of the decoder query most confident at that
  pixel (the segmenter's own proposal, as SAM proposes a mask for a point), and where no query claims the
  pixel, a square window around it;
- mask: that region.

A predicted segment or a query proposal is captioned with its decoder query (SCA's segment token); a box or a
window that no segment stands for has no query (the captioner's learnt "no query" token). So a prompt is
always captioned, whatever the segmenter found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from omtseg.boxes import box_masks
from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import (
    SegmenterPass,
    caption_segments,
    mask_to_canvas,
    match_queries,
    padded_canvas,
)
from omtseg.modeling.postprocess import masks_to_original
from omtseg.types import Batch

WINDOW_SHARE = 0.25
"""Side of a point's window as a share of the image's short side (where no segment or query claims it)."""


@dataclass
class RegionCaption:
    """One captioned region of a prompted (or "everything") captioning.

    Attributes:
        prompt: ``"box"``, ``"point"``, ``"mask"`` or ``"segment"`` (everything mode).
        value: the box ``[x0, y0, x1, y1]``, the point ``[x, y]``, the mask's index, or the segment id.
        caption: the text.
        mask: (H0, W0) bool, the region captioned at the image's size.
        source: what was captioned: ``"segment"`` (a predicted panoptic segment), ``"query"`` (the
            proposal of the query most confident at a point), ``"box"``, ``"window"`` (around a point no
            query claims) or ``"mask"``.
        segment_id: the predicted segment captioned, or None.
    """

    prompt: str
    value: list[float] | int
    caption: str
    mask: Tensor
    source: str
    segment_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: prompt, caption, source, segment id, and the region's area and ``[x, y, w, h]`` box."""
        ys, xs = torch.nonzero(self.mask, as_tuple=True)
        bbox = (
            [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs)
            else [0, 0, 0, 0]
        )
        return {
            "prompt": self.prompt,
            "value": self.value,
            "caption": self.caption,
            "source": self.source,
            "segment_id": self.segment_id,
            "area": int(self.mask.sum()),
            "bbox": bbox,
        }


@dataclass
class _Region:
    prompt: str
    value: list[float] | int
    mask: Tensor  # (H0, W0) bool
    source: str
    segment_id: int | None = None
    query: int | None = None  # a known query index (a point's proposal)


def _box(box: Sequence[float], size: tuple[int, int]) -> list[float]:
    h, w = size
    if len(box) != 4:
        raise ValueError(f"Box {list(box)} must be 4 numbers x0, y0, x1, y1 (pixels of the image).")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1) or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(
            f"Box {list(box)} is not x0, y0, x1, y1 with x0 < x1 and y0 < y1 overlapping the {w}x{h} image."
        )
    return [x0, y0, x1, y1]


def _point(point: Sequence[float], size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    if len(point) != 2:
        raise ValueError(f"Point {list(point)} must be 2 numbers x, y (pixels of the image).")
    x, y = int(point[0]), int(point[1])
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"Point {list(point)} lies outside the {w}x{h} image.")
    return x, y


def _resolve(
    tap: SegmenterPass,
    batch: Batch,
    boxes: Sequence[Sequence[float]],
    points: Sequence[Sequence[float]],
    masks: Tensor | None,
    min_iou: float,
) -> list[_Region]:
    """The region each prompt designates (see the module docstring), in prompt order: boxes, points, masks."""
    assert tap.results is not None and tap.results[0].panoptic is not None
    info, panoptic = batch.infos[0], tap.results[0].panoptic
    size = (int(info.orig_size[0]), int(info.orig_size[1]))
    id_map = panoptic.id_map.to(tap.mask_logits.device)  # (H0, W0)
    segment_masks = [id_map == s.id for s in panoptic.segments]
    regions: list[_Region] = []
    for raw in boxes:
        box = _box(raw, size)
        region = box_masks(torch.tensor([box], device=id_map.device), size)[0]
        ious = [float((region & m).sum()) / float((region | m).sum()) for m in segment_masks]
        best = max(range(len(ious)), key=ious.__getitem__, default=None)
        if best is not None and ious[best] >= min_iou:
            seg_id = panoptic.segments[best].id
            regions.append(_Region("box", box, segment_masks[best], "segment", seg_id))
        else:
            regions.append(_Region("box", box, region, "box"))
    proposals: Tensor | None = None
    for raw in points:
        x, y = _point(raw, size)
        value = [float(raw[0]), float(raw[1])]
        seg_id = int(id_map[y, x])
        if seg_id:
            regions.append(_Region("point", value, id_map == seg_id, "segment", seg_id))
            continue
        if proposals is None:
            canvas = padded_canvas(batch.images)
            proposals = masks_to_original(tap.mask_logits[0], canvas_hw=canvas, info=info)  # (Q, H0, W0)
        q = int(proposals[:, y, x].argmax())
        if proposals[q, y, x] > 0:
            regions.append(_Region("point", value, proposals[q] > 0, "query", query=q))
            continue
        half = max(2, round(WINDOW_SHARE * min(size) / 2))
        window = box_masks(torch.tensor([[x - half, y - half, x + half + 1, y + half + 1]]), size)[0]
        regions.append(_Region("point", value, window.to(id_map.device), "window"))
    if masks is not None:
        if masks.ndim != 3 or tuple(masks.shape[1:]) != size:
            raise ValueError(f"Masks must be (S, H, W) at the image's size {size}; got {tuple(masks.shape)}.")
        for i, m in enumerate(masks.bool().to(id_map.device)):
            if not m.any():
                raise ValueError(f"Mask {i} is empty; give masks with at least one pixel set.")
            regions.append(_Region("mask", i, m, "mask"))
    return regions


@torch.no_grad()
def caption_prompts(
    tap: SegmenterPass,
    captioner: SegmentCaptioner,
    batch: Batch,
    *,
    boxes: Sequence[Sequence[float]] = (),
    points: Sequence[Sequence[float]] = (),
    masks: Tensor | None = None,
    min_iou: float = 0.5,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    chunk_size: int = 32,
) -> list[RegionCaption]:
    """Caption the regions that prompts designate in a one-image batch, from one segmenter pass.

    Args:
        tap: the segmenter's pass over ``batch`` with its post-processed results (panoptic needed), as
            :meth:`SegmenterTap.captured` gives it.
        captioner: the captioner for this segmenter.
        batch: one image.
        boxes: ``x0, y0, x1, y1`` in pixels of the original image.
        points: ``x, y`` in pixels of the original image.
        masks: (S, H0, W0) bool regions at the image's size.
        min_iou: IoU a predicted segment needs to stand for a box.
        max_new_tokens, num_beams: decoding settings.
        chunk_size: regions captioned at once.

    Returns:
        One :class:`RegionCaption` per box, then per point, then per mask; without any prompt, one per
        predicted panoptic segment (whose ``caption`` is set too).

    Raises:
        ValueError: a batch of several images, or a malformed or out-of-image prompt.
    """
    if len(batch) != 1 or tap.results is None or tap.results[0].panoptic is None:
        raise ValueError("Prompted captioning takes one image and its pass's panoptic result.")
    info, panoptic = batch.infos[0], tap.results[0].panoptic
    if not boxes and not points and masks is None:
        caption_segments(tap, captioner, batch, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [
            RegionCaption("segment", s.id, s.caption or "", (panoptic.id_map == s.id).cpu(), "segment", s.id)
            for s in panoptic.segments
        ]
    regions = _resolve(tap, batch, boxes, points, masks, min_iou)
    canvas = padded_canvas(batch.images)
    device = tap.mask_logits.device
    on_canvas = torch.stack([mask_to_canvas(r.mask, info, canvas) for r in regions]).to(device)  # (S, H, W)
    index = torch.zeros(len(regions), dtype=torch.long, device=device)
    matched = match_queries(tap.mask_logits, on_canvas, index).tolist()  # per region, its best query
    query_of = [m if r.query is None else r.query for r, m in zip(regions, matched, strict=True)]
    captions = [""] * len(regions)
    with_query = [i for i, r in enumerate(regions) if r.source in ("segment", "query", "mask")]
    without_query = [i for i, r in enumerate(regions) if i not in set(with_query)]
    for group, use_query in ((with_query, True), (without_query, False)):
        for start in range(0, len(group), chunk_size):
            part = torch.tensor(group[start : start + chunk_size], device=device)
            query = None
            if use_query:
                picked = torch.tensor([query_of[i] for i in part.tolist()], device=device)
                query = tap.queries[0, picked]  # (s, C)
            texts = captioner.generate(
                tap.multi_scale, on_canvas[part], index[part], query,
                max_new_tokens=max_new_tokens, num_beams=num_beams,
            )  # fmt: skip
            for i, text in zip(part.tolist(), texts, strict=True):
                captions[i] = text
    return [
        RegionCaption(r.prompt, r.value, text, r.mask.cpu(), r.source, r.segment_id)
        for r, text in zip(regions, captions, strict=True)
    ]
