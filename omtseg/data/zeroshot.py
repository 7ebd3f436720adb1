"""Datasets of the zero-shot benchmarks: semantic label maps (mIoU) and ADE20K-150 panoptic (PQ and mIoU).

Every item is a :class:`~omtseg.types.Sample` with ``semantic`` set: (H, W) int64 class indices into the
benchmark's vocabulary, :data:`~omtseg.types.IGNORE_INDEX` where the benchmark's ignore value (255 or
65535) lies. That is what the mIoU metric consumes (through :class:`~omtseg.types.Batch.semantic`).

Semantic datasets can also carry ``targets`` built from the label map, one mask per class present, so the
same model, criterion and post-processing run on them as on panoptic data (each class is one segment).

Items may be asked for as ``index`` or ``(index, seed)``, as for :class:`CocoPanopticDataset`: the seed
drives the transform's random draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from omtseg.data.benchmark_registry import benchmark_spec, zero_shot_vocabulary
from omtseg.data.coco_panoptic import CocoPanopticDataset, Transform
from omtseg.io import read_image
from omtseg.types import IGNORE_INDEX, ImageInfo, Sample, Targets, Vocabulary


def read_label_map(path: str | os.PathLike[str]) -> np.ndarray:
    """A single-channel label map (8-bit or palette PNG, uint16 TIFF ``I;16``) as (H, W) int64 values.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, or not single-channel (an RGB label image is a color rendering, not labels).
    """
    array = read_image(path, mode="", exif=False)  # as stored: palette indices and uint16 values, unturned
    if array.ndim != 2:
        raise ValueError(
            f"Label map {path} has {array.shape[-1]} channels; label maps are single-channel class indices. "
            "Use the prepared annotations (`omtseg prepare`), not color renderings."
        )
    return array.astype(np.int64)


def semantic_from_labels(
    labels: np.ndarray, *, ignore_value: int, num_classes: int, source: str = "label map"
) -> Tensor:
    """Benchmark label values -> (H, W) int64 class indices with IGNORE_INDEX at ``ignore_value``.

    Raises:
        ValueError: a value is neither a class index (``0..num_classes-1``) nor ``ignore_value``; the map
            belongs to another benchmark or was not prepared.
    """
    ignore = labels == ignore_value
    bad = np.unique(labels[~ignore & ((labels < 0) | (labels >= num_classes))])
    if bad.size:
        raise ValueError(
            f"{source} holds values {bad[:10].tolist()} outside the {num_classes} classes and the ignore "
            f"value {ignore_value}; it is not a prepared label map of this benchmark (run `omtseg prepare`)."
        )
    semantic = torch.from_numpy(labels)
    semantic[torch.from_numpy(ignore)] = IGNORE_INDEX
    return semantic


def targets_from_semantic(semantic: Tensor, vocabulary: Vocabulary) -> Targets:
    """One segment per class present in ``semantic`` (H, W), in class order; IGNORE_INDEX pixels are void.

    ``segment_ids`` are the class indices (a class is one segment), ``is_thing`` comes from the vocabulary.
    """
    labels = torch.unique(semantic[semantic != IGNORE_INDEX])  # sorted (N,)
    h, w = semantic.shape
    return Targets(
        labels=labels,
        masks=semantic[None] == labels[:, None, None],  # (N, H, W)
        is_thing=torch.tensor([vocabulary.is_thing[k] for k in labels.tolist()], dtype=torch.bool),
        crowd_labels=torch.zeros(0, dtype=torch.int64),
        crowd_masks=torch.zeros((0, h, w), dtype=torch.bool),
        void=semantic == IGNORE_INDEX,
        segment_ids=labels.clone(),
    )


def _apply(sample: Sample, transform: Transform | None, seed: int | None) -> Sample:
    if transform is None:
        return sample
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return transform(sample, generator)


class SemanticSegmentationDataset(Dataset):
    """Images with semantic label maps of the same stem (``images/x.jpg`` + ``labels/x.png``).

    Args:
        image_dir: folder of the images; every file ending in ``image_suffix`` is an item (sorted by name).
        label_dir: folder of the label maps.
        vocabulary: the K classes that label values ``0..K-1`` index.
        ignore_value: label value of unlabelled pixels (255 for 8-bit PNG, 65535 for uint16 TIFF).
        label_suffix: label file extension (``.png`` or ``.tif``).
        image_suffix: image file extension.
        with_targets: also build ``targets`` (one mask per class present) for the panoptic-style model.
        transform: applied to each loaded sample; None keeps the original size.
        prepare_hint: the command that builds these folders, for error messages.

    Raises:
        FileNotFoundError: a folder is missing, holds no image, or an image has no label map.
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike[str],
        label_dir: str | os.PathLike[str],
        vocabulary: Vocabulary,
        ignore_value: int = 255,
        label_suffix: str = ".png",
        image_suffix: str = ".jpg",
        with_targets: bool = True,
        transform: Transform | None = None,
        prepare_hint: str = "omtseg prepare <benchmark> --src RAW --dst ROOT",
    ) -> None:
        self.image_dir = Path(image_dir)
        self.label_dir = Path(label_dir)
        self.vocabulary = vocabulary
        self.ignore_value = ignore_value
        self.label_suffix = label_suffix
        self.with_targets = with_targets
        self.transform = transform
        for folder, what in ((self.image_dir, "Image folder"), (self.label_dir, "Label folder")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} not found: {folder}. Build it with `{prepare_hint}`.")
        self.files = sorted(p.name for p in self.image_dir.iterdir() if p.name.endswith(image_suffix))
        if not self.files:
            raise FileNotFoundError(
                f"No '*{image_suffix}' image in {self.image_dir}; the folder is empty or not prepared "
                f"(`{prepare_hint}`)."
            )
        missing = [f for f in self.files if not self._label_path(f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.files)} images have no label map in {self.label_dir} "
                f"(e.g. {self._label_path(missing[0]).name}); the preparation was interrupted, re-run "
                f"`{prepare_hint}` (it resumes)."
            )

    def _label_path(self, file_name: str) -> Path:
        return self.label_dir / (Path(file_name).stem + self.label_suffix)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        index, seed = item if isinstance(item, tuple) else (item, None)
        return _apply(self.load(index), self.transform, seed)

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index`` at the image's original size."""
        file_name = self.files[index]
        image = read_image(self.image_dir / file_name)  # (H, W, 3) uint8
        label_path = self._label_path(file_name)
        labels = read_label_map(label_path)
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"Label map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; the label map belongs to another image."
            )
        semantic = semantic_from_labels(
            labels, ignore_value=self.ignore_value, num_classes=len(self.vocabulary), source=str(label_path)
        )
        h, w = image.shape[:2]
        return Sample(
            image=torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            targets=targets_from_semantic(semantic, self.vocabulary) if self.with_targets else None,
            info=ImageInfo(
                image_id=Path(file_name).stem, file_name=file_name, orig_size=(h, w), resized_size=(h, w)
            ),
            semantic=semantic,
        )


class ADE20KPanopticDataset(Dataset):
    """ADE20K-150 panoptic: the COCO-panoptic loader on ``ade20k_panoptic_{split}`` plus the semantic map.

    Targets come from the panoptic PNG and JSON (PQ); ``semantic`` from ``annotations_detectron2`` (mIoU),
    as the detectron2-based projects evaluate ADE20K-150: the two differ where a thing pixel has a class but
    no instance.

    Args:
        root: datasets root (default ``$OMTSEG_DATASETS`` or ``data/``).
        split: ``"train"`` or ``"val"``.
        with_semantic: also read the semantic map.
        transform: applied to each loaded sample (targets and semantic map move together).

    Raises:
        FileNotFoundError: the prepared layout is missing.
        ValueError: the panoptic JSON's categories are not ADE20K-150's 150 classes in label order.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        with_semantic: bool = True,
        transform: Transform | None = None,
    ) -> None:
        self.spec = benchmark_spec("ade20k_150_panoptic")
        self.vocabulary = zero_shot_vocabulary(self.spec.name)
        self.transform = transform
        self.label_dir = self.spec.path(self.spec.labels, split, root) if with_semantic else None
        assert self.spec.panoptic_json is not None and self.spec.panoptic_dir is not None
        panoptic_json = self.spec.path(self.spec.panoptic_json, split, root)
        try:
            self.panoptic = CocoPanopticDataset(
                image_dir=self.spec.path(self.spec.images, split, root),
                panoptic_dir=self.spec.path(self.spec.panoptic_dir, split, root),
                panoptic_json=panoptic_json,
            )
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} Build the layout with `omtseg prepare ade20k_150`.") from e
        found = self.panoptic.vocabulary
        if found.category_ids != self.vocabulary.category_ids or found.is_thing != self.vocabulary.is_thing:
            raise ValueError(
                f"{panoptic_json} does not list ADE20K-150's "
                "categories (ids 0..149 in label order, 100 things); re-create it with "
                "`omtseg prepare ade20k_150`."
            )
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise FileNotFoundError(
                f"Semantic label folder not found: {self.label_dir}. Build it with "
                "`omtseg prepare ade20k_150`, or pass with_semantic=False."
            )

    def __len__(self) -> int:
        return len(self.panoptic)

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        index, seed = item if isinstance(item, tuple) else (item, None)
        return _apply(self.load(index), self.transform, seed)

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index`` at the image's original size."""
        sample = self.panoptic.load(index)
        if self.label_dir is None:
            return sample
        label_path = self.label_dir / (Path(sample.info.file_name).stem + self.spec.label_suffix)
        labels = read_label_map(label_path)
        if labels.shape != sample.info.orig_size:
            raise ValueError(
                f"Semantic map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                f"{sample.info.orig_size[1]}x{sample.info.orig_size[0]}; it belongs to another image."
            )
        sample.semantic = semantic_from_labels(
            labels,
            ignore_value=self.spec.ignore_value,
            num_classes=self.spec.num_classes,
            source=str(label_path),
        )
        return sample


def zero_shot_dataset(
    benchmark: str,
    *,
    split: str = "val",
    root: str | os.PathLike[str] | None = None,
    with_targets: bool = True,
    transform: Transform | None = None,
) -> SemanticSegmentationDataset | ADE20KPanopticDataset:
    """The dataset of a registered benchmark (:data:`~omtseg.data.benchmark_registry.BENCHMARKS`) under the
    datasets root.

    Args:
        benchmark: e.g. ``"ade20k_847"``; ``"ade20k_150_panoptic"`` gives :class:`ADE20KPanopticDataset`.
        split: ``"train"`` or ``"val"`` (zero-shot evaluation uses ``"val"``).
        root: datasets root (default ``$OMTSEG_DATASETS`` or ``data/``).
        with_targets: semantic benchmarks: also build per-class targets.
        transform: applied to each loaded sample.
    """
    spec = benchmark_spec(benchmark)
    if spec.is_panoptic:
        return ADE20KPanopticDataset(root=root, split=split, transform=transform)
    return SemanticSegmentationDataset(
        image_dir=spec.path(spec.images, split, root),
        label_dir=spec.path(spec.labels, split, root),
        vocabulary=zero_shot_vocabulary(benchmark),
        ignore_value=spec.ignore_value,
        label_suffix=spec.label_suffix,
        with_targets=with_targets,
        transform=transform,
        prepare_hint=f"omtseg prepare {spec.prepare} --src RAW --dst {_root_hint(root)}",
    )


def _root_hint(root: str | os.PathLike[str] | None) -> str:
    return str(root) if root is not None else "$OMTSEG_DATASETS"
