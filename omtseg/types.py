"""Plain dataclasses shared by every layer (data, modeling, evaluation, the LightningModule).

Shape letters: B batch, Q queries, K classes, P prompt entries, N segments, H, W pixels.
Class indices are contiguous positions in a :class:`Vocabulary` (``0..K-1``); dataset category
ids (COCO ``category_id``) only appear in :attr:`Vocabulary.category_ids` and in exported files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

IGNORE_INDEX: int = -1
"""Semantic label of pixels that no metric or loss counts (void, crowd, a benchmark's 255/65535)."""


@dataclass(frozen=True)
class Vocabulary:
    """The class list a model segments with; open vocabulary means any list of names.

    Attributes:
        names: K display names (``"wall"``, not ``"wall-other-merged"``).
        synonyms: per class, the prompt names the model reads (at least one; the first is usually
            ``names[k]``). Scores over the synonyms of one class are combined by the model.
        is_thing: per class, True for countable objects (instances), False for stuff.
        category_ids: per class, the dataset's category id (for export); defaults to ``1..K``.
        colors: per class, an RGB color for pictures.
        groups: per class, the name of an evaluation group (the open-vocabulary world's ``seen``,
            ``unseen``, ``novel``), so metrics can be reported per group; None when there are none.
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    is_thing: tuple[bool, ...]
    category_ids: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        k = len(self.names)
        lengths = {len(self.synonyms), len(self.is_thing), len(self.category_ids), len(self.colors)}
        if self.groups is not None:
            lengths.add(len(self.groups))
        if lengths != {k}:
            raise ValueError(
                f"Vocabulary fields disagree in length (names={k}, synonyms={len(self.synonyms)}, "
                f"is_thing={len(self.is_thing)}, category_ids={len(self.category_ids)}, "
                f"colors={len(self.colors)}, groups={len(self.groups or ())}); give one entry per class."
            )
        if k == 0:
            raise ValueError("A vocabulary needs at least one class name.")
        if any(len(s) == 0 for s in self.synonyms):
            raise ValueError("Every class needs at least one prompt name in `synonyms`.")
        if len(set(self.category_ids)) != k:
            raise ValueError("Vocabulary category_ids must be unique.")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_names(
        cls,
        names: list[str] | tuple[str, ...],
        is_thing: list[bool] | tuple[bool, ...] | None = None,
    ) -> Vocabulary:
        """A vocabulary from plain names; ``"tv, monitor"`` gives one class with two synonyms."""
        parts = [tuple(p.strip() for p in n.split(",") if p.strip()) for n in names]
        if any(len(p) == 0 for p in parts):
            raise ValueError(f"Empty class name in {list(names)!r}.")
        k = len(parts)
        return cls(
            names=tuple(p[0] for p in parts),
            synonyms=tuple(parts),
            is_thing=tuple(is_thing) if is_thing is not None else (True,) * k,
            category_ids=tuple(range(1, k + 1)),
            colors=tuple(_default_color(i) for i in range(k)),
        )

    def subset(self, indices: list[int]) -> Vocabulary:
        """The classes at ``indices``, in that order (used to sample and shuffle per batch)."""
        return Vocabulary(
            names=tuple(self.names[i] for i in indices),
            synonyms=tuple(self.synonyms[i] for i in indices),
            is_thing=tuple(self.is_thing[i] for i in indices),
            category_ids=tuple(self.category_ids[i] for i in indices),
            colors=tuple(self.colors[i] for i in indices),
            groups=None if self.groups is None else tuple(self.groups[i] for i in indices),
        )


def _default_color(i: int) -> tuple[int, int, int]:
    # Golden-ratio hue walk: distinct, deterministic colors for any number of classes.
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class Targets:
    """Ground truth of one image, at the image's (transformed, unpadded-in-content) size.

    Attributes:
        labels: (N,) int64 class indices into the vocabulary.
        masks: (N, H, W) bool, one per non-crowd segment; segments do not overlap.
        is_thing: (N,) bool.
        crowd_labels: (M,) int64 class indices of ``iscrowd`` segments (ignored in training and PQ).
        crowd_masks: (M, H, W) bool.
        void: (H, W) bool, pixels with no label (panoptic id 0, a benchmark's ignore value) or
            padding added by transforms.
        segment_ids: (N,) int64 the dataset's segment ids (for export and debugging).
    """

    labels: Tensor
    masks: Tensor
    is_thing: Tensor
    crowd_labels: Tensor
    crowd_masks: Tensor
    void: Tensor
    segment_ids: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Targets:
        """A copy on ``device`` (Lightning moves batches with ``.to``)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        return Targets(**moved)

    def pin_memory(self) -> Targets:
        """A copy in pinned memory (the DataLoader's ``pin_memory=True`` calls this)."""
        return Targets(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    @property
    def ignore(self) -> Tensor:
        """(H, W) bool: void or crowd, the pixels that losses and metrics skip."""
        if self.crowd_masks.shape[0] == 0:
            return self.void
        return self.void | self.crowd_masks.any(0)

    def semantic(self) -> Tensor:
        """(H, W) int64 per-pixel class index, :data:`IGNORE_INDEX` at void and crowd."""
        h, w = self.void.shape
        out = self.labels.new_full((h, w), IGNORE_INDEX)
        for label, mask in zip(self.labels.tolist(), self.masks, strict=True):
            out[mask] = label
        out[self.ignore] = IGNORE_INDEX
        return out


@dataclass
class ImageInfo:
    """Where an image came from and how to map a prediction back to it.

    Attributes:
        image_id: the dataset's image id.
        file_name: image file name (relative to the images folder).
        orig_size: (H0, W0) of the file on disk.
        resized_size: (h, w) after resizing, before padding; predictions are cropped to this, then
            resized to ``orig_size``.
        flipped: True when a horizontal flip was applied.
    """

    image_id: int | str
    file_name: str
    orig_size: tuple[int, int]
    resized_size: tuple[int, int]
    flipped: bool = False


@dataclass
class OriginalLabels:
    """An evaluation image's ground truth at its original size (``ImageInfo.orig_size``), kept beside the
    resized labels so metrics compare predictions at the original resolution, as official evaluations do.

    Attributes:
        targets: ground truth at (H0, W0), or None for mIoU-only benchmarks.
        semantic: (H0, W0) int64 semantic labels of mIoU-only benchmarks (IGNORE_INDEX at ignore), or None.
    """

    targets: Targets | None
    semantic: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> OriginalLabels:
        """A copy with every tensor on ``device``."""
        return OriginalLabels(
            targets=None if self.targets is None else self.targets.to(device, non_blocking),
            semantic=None if self.semantic is None else self.semantic.to(device, non_blocking=non_blocking),
        )

    def semantic_labels(self) -> Tensor:
        """(H0, W0) int64 semantic labels: ``semantic`` or the ones derived from ``targets``."""
        if self.semantic is not None:
            return self.semantic
        if self.targets is None:
            raise ValueError("OriginalLabels holds neither targets nor a semantic map.")
        return self.targets.semantic()


@dataclass
class Sample:
    """One transformed image with its ground truth.

    Attributes:
        image: (3, H, W) uint8 RGB; models normalise.
        targets: ground truth at the same size, or None (prediction on unlabelled images).
        semantic: (H, W) int64 semantic labels for mIoU-only benchmarks (IGNORE_INDEX at ignore),
            or None when derived from ``targets``.
        info: provenance and size bookkeeping.
        original: the ground truth at the original size (evaluation transforms that keep it), or None.
    """

    image: Tensor
    targets: Targets | None
    info: ImageInfo
    semantic: Tensor | None = None
    original: OriginalLabels | None = None


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: (B, 3, H, W) uint8, zero padded at bottom/right.
        padding_mask: (B, H, W) bool, True at padding.
        targets: per image, or None when unlabelled.
        semantic: (B, H, W) int64 or None, IGNORE_INDEX at ignore and padding.
        infos: per image.
        vocabulary: the class list the batch's labels index.
        originals: per image, the ground truth at the original size (metrics are then computed there),
            or None.
        skipped: ``(file name, reason)`` of the batch's files that could not be read (prediction reports
            and skips them; the batch holds the others, possibly none).
    """

    images: Tensor
    padding_mask: Tensor
    targets: list[Targets] | None
    infos: list[ImageInfo]
    vocabulary: Vocabulary
    semantic: Tensor | None = None
    originals: list[OriginalLabels] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    # Lightning's default transfer walks dataclasses field by field and cannot rebuild the frozen
    # Vocabulary; an object with ``to`` is moved by calling it instead. Infos and vocabulary stay put.
    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            padding_mask=self.padding_mask.to(device, non_blocking=non_blocking),
            targets=None if self.targets is None else [t.to(device, non_blocking) for t in self.targets],
            infos=self.infos,
            vocabulary=self.vocabulary,
            semantic=None if self.semantic is None else self.semantic.to(device, non_blocking=non_blocking),
            originals=None
            if self.originals is None
            else [o.to(device, non_blocking) for o in self.originals],
            skipped=self.skipped,
        )

    def pin_memory(self) -> Batch:
        """A copy with every tensor in pinned memory (DataLoader ``pin_memory=True``)."""
        return Batch(
            images=self.images.pin_memory(),
            padding_mask=self.padding_mask.pin_memory(),
            targets=None if self.targets is None else [t.pin_memory() for t in self.targets],
            infos=self.infos,
            vocabulary=self.vocabulary,
            semantic=None if self.semantic is None else self.semantic.pin_memory(),
            originals=self.originals,
        )


@dataclass
class Predictions:
    """Raw head outputs for one decoder prediction (the final layer or an auxiliary one).

    Attributes:
        class_logits: (B, Q, K) scaled cosine similarities of queries to the classes.
        objectness_logits: (B, Q) logit that the query is an object (not "no object").
        mask_logits: (B, Q, H/4, W/4) mask logits at the mask-feature resolution.
        aux: earlier decoder predictions (deep supervision), oldest first; empty on aux entries.
    """

    class_logits: Tensor
    objectness_logits: Tensor
    mask_logits: Tensor
    aux: list[Predictions] = field(default_factory=list)


@dataclass
class PanopticSegment:
    """One segment of a panoptic result; ``id`` is its value in the id map (> 0).

    ``caption`` is a description of the segment, filled by segment captioning (None when not captioned).
    """

    id: int
    label: int
    is_thing: bool
    score: float
    area: int
    caption: str | None = None


@dataclass
class PanopticResult:
    """Panoptic output at the original image size.

    Attributes:
        id_map: (H0, W0) int32 segment ids, 0 where no segment (void).
        segments: the segments present in ``id_map``.
    """

    id_map: Tensor
    segments: list[PanopticSegment]


@dataclass
class InstanceResult:
    """Instance output at the original image size: masks (M, H0, W0) bool, labels (M,), scores (M,)."""

    masks: Tensor
    labels: Tensor
    scores: Tensor


@dataclass
class SemanticResult:
    """Semantic output at the original image size: one class per pixel, not K score maps.

    Attributes:
        labels: (H0, W0) int32 class indices into the vocabulary, each pixel's best-scoring class.
        scores: (H0, W0) float32 that class's score (``sum_q p(k) * p(object) * mask_prob``), or None.
    """

    labels: Tensor
    scores: Tensor | None = None


@dataclass
class ImageResult:
    """Everything inference produces for one image.

    Attributes:
        info: the image's provenance.
        panoptic: panoptic result, or None when not requested.
        semantic: per-pixel class labels (and their scores), or None.
        instances: instance result, or None.
    """

    info: ImageInfo
    panoptic: PanopticResult | None = None
    semantic: SemanticResult | None = None
    instances: InstanceResult | None = None
