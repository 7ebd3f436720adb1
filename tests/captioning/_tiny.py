"""Tiny parts shared by the captioning tests: a frozen-style segmenter, a captioner, one-image batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.data.synthetic import synthetic_vocabulary
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo

VOCAB = synthetic_vocabulary()


def tiny_segmenter() -> OMTSeg:
    torch.manual_seed(0)
    return OMTSeg(
        backbone="tiny",
        img_size=64,
        adapter_channels=32,
        conv_dim=32,
        mask_dim=16,
        num_pixel_decoder_layers=1,
        hidden_dim=32,
        num_queries=6,
        num_decoder_layers=2,
        num_heads=4,
        decoder_feedforward=48,
        pixel_decoder_feedforward=48,
        object_threshold=0.0,  # an untrained segmenter: keep its segments so there is something to caption
        overlap_threshold=0.0,
    )


def tiny_captioner(lm_dir: Path, **kw: Any) -> SegmentCaptioner:
    torch.manual_seed(0)
    args: dict[str, Any] = dict(
        language_model=lm_dir, feature_dim=32, query_dim=32, width=32, num_layers=3, num_heads=2, ffn_dim=64
    )
    return SegmentCaptioner(**{**args, **kw})


def image_batch(images: torch.Tensor, size: tuple[int, int]) -> Batch:
    b = images.shape[0]
    infos = [ImageInfo(image_id=i, file_name=f"{i}.png", orig_size=size, resized_size=size) for i in range(b)]
    return Batch(
        images=images,
        padding_mask=torch.zeros(b, *images.shape[-2:], dtype=torch.bool),
        targets=None,
        infos=infos,
        vocabulary=VOCAB,
    )
