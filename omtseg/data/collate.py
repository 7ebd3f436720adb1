"""Collate transformed samples into a padded :class:`~omtseg.types.Batch`.

Images are zero padded at the bottom/right to the batch's largest size (rounded up to
``size_divisibility``) or to a fixed size. ``padding_mask`` is True outside each image's content
(``info.resized_size``), which covers both the transform's padding and the batch padding. Targets are padded
to the batch size too (masks False, void True), so every tensor of a batch shares one (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omtseg.types import IGNORE_INDEX, Batch, Sample, Targets, Vocabulary


def _pad_targets(t: Targets, size: tuple[int, int]) -> Targets:
    h, w = t.void.shape
    pad = (0, size[1] - w, 0, size[0] - h)
    return Targets(
        labels=t.labels,
        masks=F.pad(t.masks, pad, value=False),
        is_thing=t.is_thing,
        crowd_labels=t.crowd_labels,
        crowd_masks=F.pad(t.crowd_masks, pad, value=False),
        void=F.pad(t.void, pad, value=True),
        segment_ids=t.segment_ids,
    )


def collate(
    samples: Sequence[Sample],
    *,
    vocabulary: Vocabulary,
    size_divisibility: int = 1,
    fixed_size: tuple[int, int] | None = None,
) -> Batch:
    """Stack samples into a :class:`Batch` of shape (B, 3, H, W).

    Args:
        samples: transformed samples; all labelled or all unlabelled.
        vocabulary: the class list the samples' labels index.
        size_divisibility: round the batch (H, W) up to a multiple of this.
        fixed_size: pad every batch to exactly this (H, W) instead (e.g. for compiled models).

    Returns:
        The batch; ``semantic`` (B, H, W) is filled when every sample has targets or a semantic map,
        with IGNORE_INDEX at ignore and padding.

    Raises:
        ValueError: no samples, labelled mixed with unlabelled samples, or an image larger than
            ``fixed_size``.
    """
    if len(samples) == 0:
        raise ValueError("Cannot collate an empty list of samples; check the dataset is not empty.")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}.")
    sizes = [tuple(s.image.shape[-2:]) for s in samples]
    if fixed_size is not None:
        h, w = int(fixed_size[0]), int(fixed_size[1])
        too_big = [s.info.file_name for s, (sh, sw) in zip(samples, sizes, strict=True) if sh > h or sw > w]
        if too_big:
            raise ValueError(
                f"Images {too_big} are larger than fixed_size={(h, w)}; raise fixed_size or resize smaller."
            )
    else:
        d = size_divisibility
        h = -(-max(s[0] for s in sizes) // d) * d
        w = -(-max(s[1] for s in sizes) // d) * d

    b = len(samples)
    images = torch.zeros((b, 3, h, w), dtype=torch.uint8)
    padding_mask = torch.ones((b, h, w), dtype=torch.bool)
    for i, s in enumerate(samples):
        sh, sw = sizes[i]
        images[i, :, :sh, :sw] = s.image
        rh, rw = s.info.resized_size
        padding_mask[i, :rh, :rw] = False

    labelled = [s.targets is not None for s in samples]
    if any(labelled) and not all(labelled):
        raise ValueError(
            "A batch mixes samples with and without targets; use one dataset per dataloader "
            "(labelled for fit/validate/test, unlabelled for predict)."
        )
    targets = None
    if all(labelled):
        # Every sample has targets (checked just above); the filter only narrows the type.
        targets = [_pad_targets(s.targets, (h, w)) for s in samples if s.targets is not None]

    semantic = None
    if all(s.semantic is not None or s.targets is not None for s in samples):
        semantic = torch.full((b, h, w), IGNORE_INDEX, dtype=torch.int64)
        for i, s in enumerate(samples):
            if s.semantic is not None:
                sem = s.semantic
            else:
                assert s.targets is not None, "checked above: every sample has a semantic map or targets"
                sem = s.targets.semantic()
            semantic[i, : sem.shape[0], : sem.shape[1]] = sem
        semantic[padding_mask] = IGNORE_INDEX

    originals = [s.original for s in samples]
    return Batch(
        images=images,
        padding_mask=padding_mask,
        targets=targets,
        infos=[s.info for s in samples],
        vocabulary=vocabulary,
        semantic=semantic,
        originals=None if any(o is None for o in originals) else [o for o in originals if o is not None],
    )


@dataclass(frozen=True)
class Unreadable:
    """A dataset item whose file could not be read: prediction reports and skips it.

    Attributes:
        file_name: the file, as the dataset names it.
        reason: why, in a few words ("empty file (0 bytes)", "not an image ...").
    """

    file_name: str
    reason: str


def collate_readable(
    items: Sequence[Sample | Unreadable], *, vocabulary: Vocabulary, size_divisibility: int = 1
) -> Batch:
    """:func:`collate` of the readable items; the others go to ``Batch.skipped``.

    A batch of unreadable files only is empty: (0, 3, d, d) images with d = ``size_divisibility``.
    """
    samples = [s for s in items if isinstance(s, Sample)]
    skipped = [(u.file_name, u.reason) for u in items if isinstance(u, Unreadable)]
    if samples:
        batch = collate(samples, vocabulary=vocabulary, size_divisibility=size_divisibility)
        batch.skipped = skipped
        return batch
    d = size_divisibility
    return Batch(
        images=torch.zeros((0, 3, d, d), dtype=torch.uint8),
        padding_mask=torch.ones((0, d, d), dtype=torch.bool),
        targets=None,
        infos=[],
        vocabulary=vocabulary,
        skipped=skipped,
    )
