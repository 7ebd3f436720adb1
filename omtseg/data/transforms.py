"""Mask-aware geometric transforms on :class:`~omtseg.types.Sample`, in torch (no torchvision).

Images are resized bilinearly (antialiased when shrinking); every label layer with nearest neighbour on
the same half-pixel grid, so masks stay aligned with the image. Because panoptic segments do not overlap,
the targets travel through a transform as one (H, W) index map (segment j -> j, crowd m -> N + m, void and
unlabelled as negative codes) instead of N mask planes: one gather per transform, whatever N is, and a
segment that a crop removes simply disappears when the map is turned back into masks.

Each random transform draws everything from one ``torch.Generator`` per sample; given the generator's
seed the output is bit-identical.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.types import IGNORE_INDEX, OriginalLabels, Sample, Targets

_VOID = -1  # index-map code: void pixel (or padding)
_NONE = -2  # index-map code: in no segment and not void (datasets that do not label every pixel)


@dataclass
class _Layers:
    """Everything a geometric transform moves: image (3, H, W) uint8, index map and semantic (H, W)."""

    image: Tensor
    index: Tensor | None
    semantic: Tensor | None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def _encode(targets: Targets) -> Tensor:
    """Targets -> (H, W) int64 index map (segments first, then crowd; -1 void, -2 nothing)."""
    h, w = targets.void.shape
    index = torch.full((h, w), _NONE, dtype=torch.int64)
    index[targets.void] = _VOID
    planes = (
        torch.cat([targets.masks, targets.crowd_masks]) if targets.crowd_masks.shape[0] else targets.masks
    )
    for j, mask in enumerate(planes):
        index[mask] = j
    # count_nonzero: bool .sum() upcasts to int64 and is an order of magnitude slower at COCO sizes.
    covered = int(torch.count_nonzero(planes)) + int(torch.count_nonzero(targets.void))
    if covered != int(torch.count_nonzero(index != _NONE)):
        raise ValueError(
            "Targets masks overlap (with each other, the crowd masks or the void map); panoptic "
            "segments must be disjoint. Fix the dataset that built these targets."
        )
    return index


def _decode(index: Tensor, targets: Targets) -> Targets:
    """Index map -> Targets, dropping segments with no pixel left."""
    n, m = targets.labels.shape[0], targets.crowd_labels.shape[0]
    ids = torch.arange(n + m)
    counts = torch.bincount((index - _NONE).flatten(), minlength=n + m - _NONE)[-_NONE:]  # (N + M,)
    keep = ids[:n][counts[:n] > 0]
    keep_crowd = ids[n:][counts[n:] > 0]
    return Targets(
        labels=targets.labels[keep],
        masks=index[None] == keep[:, None, None],  # (N', H, W)
        is_thing=targets.is_thing[keep],
        crowd_labels=targets.crowd_labels[keep_crowd - n],
        crowd_masks=index[None] == keep_crowd[:, None, None],  # (M', H, W)
        void=index == _VOID,
        segment_ids=targets.segment_ids[keep],
    )


def _to_layers(sample: Sample) -> _Layers:
    return _Layers(
        image=sample.image,
        index=_encode(sample.targets) if sample.targets is not None else None,
        semantic=sample.semantic,
    )


def _to_sample(layers: _Layers, sample: Sample, content: tuple[int, int], flipped: bool) -> Sample:
    targets = None
    if sample.targets is not None:
        assert layers.index is not None, "_to_layers encodes an index map for every sample with targets"
        targets = _decode(layers.index, sample.targets)
    info = dataclasses.replace(sample.info, resized_size=content, flipped=flipped)
    return Sample(image=layers.image, targets=targets, info=info, semantic=layers.semantic)


def _flip(layers: _Layers) -> _Layers:
    return _Layers(
        image=layers.image.flip(-1),
        index=layers.index.flip(-1) if layers.index is not None else None,
        semantic=layers.semantic.flip(-1) if layers.semantic is not None else None,
    )


def nearest_source_indices(in_len: int, out_len: int) -> Tensor:
    """(out_len,) source positions of nearest-neighbour resizing on the half-pixel grid.

    ``floor((i + 0.5) * in_len / out_len)`` in exact integer arithmetic: the same grid as bilinear
    resizing with ``align_corners=False`` and as ``F.interpolate(mode="nearest-exact")``.
    """
    i = torch.arange(out_len, dtype=torch.int64)
    return ((2 * i + 1) * in_len // (2 * out_len)).clamp_(max=in_len - 1)


def _resize(layers: _Layers, size: tuple[int, int]) -> _Layers:
    h, w = layers.size
    if (h, w) == tuple(size):
        return layers
    # uint8 in, uint8 out: torch's uint8 bilinear kernel is several times faster than a float round trip.
    # Antialiasing only changes shrinking (enlarging is plain bilinear either way).
    image = F.interpolate(
        layers.image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]
    rows = nearest_source_indices(h, size[0])
    cols = nearest_source_indices(w, size[1])
    return _Layers(
        image=image,
        index=layers.index[rows][:, cols] if layers.index is not None else None,
        semantic=layers.semantic[rows][:, cols] if layers.semantic is not None else None,
    )


def _crop(layers: _Layers, top: int, left: int, height: int, width: int) -> _Layers:
    def cut(x: Tensor) -> Tensor:
        return x[..., top : top + height, left : left + width]

    return _Layers(
        image=cut(layers.image),
        index=cut(layers.index) if layers.index is not None else None,
        semantic=cut(layers.semantic) if layers.semantic is not None else None,
    )


def _pad(layers: _Layers, size: tuple[int, int]) -> _Layers:
    h, w = layers.size
    if size[0] < h or size[1] < w:
        raise ValueError(f"Cannot pad an image of size {(h, w)} to the smaller size {tuple(size)}.")
    pad = (0, size[1] - w, 0, size[0] - h)  # right and bottom: content stays at the top-left
    return _Layers(
        image=F.pad(layers.image, pad, value=0),
        index=F.pad(layers.index, pad, value=_VOID) if layers.index is not None else None,
        semantic=F.pad(layers.semantic, pad, value=IGNORE_INDEX) if layers.semantic is not None else None,
    )


def hflip(sample: Sample) -> Sample:
    """Mirror left-right (an unpadded sample: padding would move to the left); toggles ``info.flipped``."""
    out = _flip(_to_layers(sample))
    return _to_sample(out, sample, sample.info.resized_size, not sample.info.flipped)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``size`` (h, w): image bilinear, labels nearest; the content size scales along."""
    h, w = int(sample.image.shape[-2]), int(sample.image.shape[-1])
    out = _resize(_to_layers(sample), (int(size[0]), int(size[1])))
    rh, rw = sample.info.resized_size
    content = (round(rh * out.size[0] / h), round(rw * out.size[1] / w))
    return _to_sample(out, sample, content, sample.info.flipped)


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Cut the window ``[top:top+height, left:left+width]`` (clipped to the image); segments left
    empty are dropped."""
    out = _crop(_to_layers(sample), top, left, height, width)
    rh, rw = sample.info.resized_size
    content = (max(0, min(out.size[0], rh - top)), max(0, min(out.size[1], rw - left)))
    return _to_sample(out, sample, content, sample.info.flipped)


def pad(sample: Sample, size: tuple[int, int]) -> Sample:
    """Pad bottom/right to ``size``: image 0, void True, semantic IGNORE_INDEX; content size is kept."""
    out = _pad(_to_layers(sample), (int(size[0]), int(size[1])))
    return _to_sample(out, sample, sample.info.resized_size, sample.info.flipped)


def _scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


class TrainTransform:
    """Training augmentation: flip, random rescale, random crop, pad (the Mask2Former/LSJ recipe).

    1. horizontal flip with probability ``flip_prob``;
    2. resize so that the short side is ``s * crop_size``, ``s ~ U[min_scale, max_scale]``;
    3. crop a random ``crop_size`` square (the whole side where the image is smaller); segments
       that the crop removes are dropped;
    4. pad bottom/right to ``crop_size`` square; padding is void.

    ``info.resized_size`` is the content size inside the padded square.

    Args:
        crop_size: side of the square training crop, in pixels.
        min_scale: smallest short side, as a multiple of ``crop_size``.
        max_scale: largest short side, as a multiple of ``crop_size``.
        flip_prob: probability of a horizontal flip.
    """

    def __init__(
        self, *, crop_size: int = 640, min_scale: float = 0.5, max_scale: float = 2.0, flip_prob: float = 0.5
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}.")
        if not 0 < min_scale <= max_scale:
            raise ValueError(
                f"Need 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}."
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}.")
        self.crop_size = crop_size
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.flip_prob = flip_prob

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Augment one sample; all random draws come from ``generator`` (torch's default one if None)."""
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        u = float(torch.rand((), generator=generator))
        layers = _to_layers(sample)
        if flip:
            layers = _flip(layers)
        h, w = layers.size
        short = self.min_scale + (self.max_scale - self.min_scale) * u
        layers = _resize(layers, _scaled(h, w, short * self.crop_size / min(h, w)))
        h, w = layers.size
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        layers = _pad(_crop(layers, top, left, ch, cw), (self.crop_size, self.crop_size))
        return _to_sample(layers, sample, (ch, cw), flip != sample.info.flipped)


class EvalTransform:
    """Evaluation/prediction resize: long side to ``size`` (aspect kept), pad to a multiple.

    ``info.resized_size`` is the size after resizing, before padding: predictions are cropped to it and
    resized to ``info.orig_size``.

    Args:
        size: target long side in pixels; None keeps the original size.
        size_divisibility: pad height and width up to a multiple of this (1: no padding); the
            backbone's largest stride (32) keeps every feature level aligned.
        keep_original: also keep the untransformed ground truth (``Sample.original``), so that metrics
            compare predictions resized back to the original size with it, as official evaluations do.
    """

    def __init__(
        self, *, size: int | None = 640, size_divisibility: int = 32, keep_original: bool = False
    ) -> None:
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels or None, got {size}.")
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}.")
        self.size = size
        self.size_divisibility = size_divisibility
        self.keep_original = keep_original

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Resize and pad one sample (deterministic; ``generator`` is accepted for a uniform call)."""
        labelled = sample.targets is not None or sample.semantic is not None
        original = None
        if self.keep_original and labelled:
            original = OriginalLabels(sample.targets, sample.semantic)
        layers = _to_layers(sample)
        h, w = layers.size
        if self.size is not None:
            layers = _resize(layers, _scaled(h, w, self.size / max(h, w)))
        content = layers.size
        d = self.size_divisibility
        layers = _pad(layers, (-(-content[0] // d) * d, -(-content[1] // d) * d))
        resized = _to_sample(layers, sample, content, sample.info.flipped)
        return dataclasses.replace(resized, original=original)
