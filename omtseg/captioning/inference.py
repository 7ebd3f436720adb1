"""Segment captioning on a trained segmenter: its features, query matching, captions for results and prompts.

The captioner reads what the frozen segmenter computes anyway: the pixel decoder's multi-scale maps and the
decoder's final query embeddings. :func:`segmenter_pass` runs one ordinary forward (or ``predict``) and keeps
both through forward hooks, so captioning costs one segmenter pass plus the mixer and the LM.

Prompted captioning (boxes, points, masks) builds on this in :mod:`omtseg.captioning.prompts`.

A region (a ground-truth segment in training, a predicted segment or a box at inference) is paired with the
decoder query whose predicted mask overlaps it most (IoU at the mask-feature resolution); that query's
embedding joins the caption queries, as in SCA where the segment's own query token conditions the caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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


def mask_to_canvas(mask: Tensor, info: ImageInfo, canvas: tuple[int, int]) -> Tensor:
    """(H0, W0) bool at the original size -> (H, W) bool on the padded canvas the segmenter saw."""
    h, w = info.resized_size
    out = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0] > 0.5
    if info.flipped:
        out = out.flip(-1)
    return F.pad(out, (0, canvas[1] - w, 0, canvas[0] - h))


def padded_canvas(images: Tensor) -> tuple[int, int]:
    """(H, W) of the canvas the segmenter saw for (B, 3, H, W) images: padded to a multiple of 32."""
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
    canvas = padded_canvas(batch.images)
    masks, index = [], []
    for i, result in enumerate(tap.results):
        panoptic = result.panoptic
        if panoptic is None:
            continue
        for seg in panoptic.segments:
            masks.append(mask_to_canvas(panoptic.id_map == seg.id, result.info, canvas))
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
