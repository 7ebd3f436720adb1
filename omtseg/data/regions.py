"""Region-caption data for the segment captioner, read from the files users have.

- Visual Genome: ``region_descriptions.json`` (a list of ``{"id": image_id, "regions": [{"region_id",
  "x", "y", "width", "height", "phrase"}, ...]}``) and the images as ``<image_id>.jpg`` under ``VG_100K`` /
  ``VG_100K_2``. Regions are boxes, rasterised into box masks.
- RefCOCOg-style referring expressions: ``refs(umd).p`` (a pickled list of refs with ``ref_id``, ``ann_id``,
  ``image_id``, ``split`` and ``sentences[].sent``) and the COCO ``instances.json`` whose annotations hold the
  referred objects' polygons or RLE.
- A panoptic dataset's segments with generated captions (:mod:`omtseg.data.caption_text`: class-name
  templates or synthetic scene descriptions).

Every source yields :class:`RegionSample`; :func:`collate_regions` pads them into a :class:`RegionBatch`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from omtseg.boxes import box_masks
from omtseg.data.caption_text import (
    WEAK_TEMPLATE,
    check_template,
    class_name_captions,
    synthetic_region_captions,
)
from omtseg.data.transforms import nearest_source_indices
from omtseg.io import load_json, read_image
from omtseg.types import ImageInfo, Sample, Targets, Vocabulary


@dataclass
class RegionSample:
    """One image with captioned regions.

    Attributes:
        image: (3, H, W) uint8 RGB.
        masks: (S, H, W) bool, one per region (box regions as box masks).
        captions: per region, its reference captions (at least one; training uses the first).
        region_ids: per region, an id unique in the dataset (keys of caption evaluation).
        info: the image's provenance.
    """

    image: Tensor
    masks: Tensor
    captions: list[list[str]]
    region_ids: list[str]
    info: ImageInfo


@dataclass
class RegionBatch:
    """Padded images and all their regions, flattened over the batch.

    Attributes:
        images: (B, 3, H, W) uint8, zero padded at bottom/right.
        masks: (S, H, W) bool regions of all images, padded alike.
        segment_batch_index: (S,) long image of each region.
        captions: per region, its references.
        region_ids: per region.
        infos: per image.
    """

    images: Tensor
    masks: Tensor
    segment_batch_index: Tensor
    captions: list[list[str]]
    region_ids: list[str]
    infos: list[ImageInfo]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RegionBatch:
        """A copy with every tensor on ``device`` (Lightning moves batches with ``.to``)."""
        return RegionBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            masks=self.masks.to(device, non_blocking=non_blocking),
            segment_batch_index=self.segment_batch_index.to(device, non_blocking=non_blocking),
            captions=self.captions,
            region_ids=self.region_ids,
            infos=self.infos,
        )

    def sample_regions(self, per_image: int, generator: torch.Generator | None = None) -> RegionBatch:
        """A copy keeping at most ``per_image`` regions of each image, drawn at random, in their order.

        SCA trains on 16 random regions per image: memory stays bounded and, over the epochs, every region
        is seen (a dataset's ``max_regions`` keeps the first ones only).
        """
        if per_image < 1:
            raise ValueError(f"per_image={per_image}; keep at least one region per image.")
        keep = []
        for i in range(len(self)):
            own = torch.nonzero(self.segment_batch_index.cpu() == i)[:, 0]  # (S_i,)
            if len(own) > per_image:
                own = own[torch.randperm(len(own), generator=generator)[:per_image].sort().values]
            keep.append(own)
        index = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
        picked = index.tolist()
        return RegionBatch(
            images=self.images,
            masks=self.masks[index.to(self.masks.device)],
            segment_batch_index=self.segment_batch_index[index.to(self.segment_batch_index.device)],
            captions=[self.captions[j] for j in picked],
            region_ids=[self.region_ids[j] for j in picked],
            infos=self.infos,
        )


def collate_regions(samples: Sequence[RegionSample], size_divisibility: int = 32) -> RegionBatch:
    """Pad images and masks to one (H, W), a multiple of ``size_divisibility``, and flatten the regions."""
    if len(samples) == 0:
        raise ValueError("Cannot collate an empty list of region samples; check the dataset is not empty.")
    h = max(s.image.shape[-2] for s in samples)
    w = max(s.image.shape[-1] for s in samples)
    h, w = h + (-h % size_divisibility), w + (-w % size_divisibility)
    images = torch.zeros((len(samples), 3, h, w), dtype=torch.uint8)
    masks, index = [], []
    for i, s in enumerate(samples):
        sh, sw = s.image.shape[-2:]
        images[i, :, :sh, :sw] = s.image
        masks.append(F.pad(s.masks, (0, w - sw, 0, h - sh)))
        index += [i] * s.masks.shape[0]
    return RegionBatch(
        images=images,
        masks=torch.cat(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool),
        segment_batch_index=torch.tensor(index, dtype=torch.long),
        captions=[c for s in samples for c in s.captions],
        region_ids=[r for s in samples for r in s.region_ids],
        infos=[s.info for s in samples],
    )


def _resized(
    image: np.ndarray, masks: Tensor, max_size: int | None
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """(H, W, 3) image and (S, H, W) masks shrunk so the longer side is at most ``max_size``."""
    img = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W)
    h, w = img.shape[-2:]
    if max_size is None or max(h, w) <= max_size:
        return img, masks, (h, w)
    scale = max_size / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    rows, cols = nearest_source_indices(h, size[0]), nearest_source_indices(w, size[1])
    return img, masks[:, rows][:, :, cols], size


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    """(S, 4) ``x, y, width, height`` -> (S, 4) ``x0, y0, x1, y1``."""
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _find_image(dirs: Sequence[Path], name: str) -> Path:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"Image {name} not found in {[str(d) for d in dirs]}; check image_dirs.")


def densecap_split_ids(path: str | os.PathLike[str], split: str) -> list[int]:
    """Image ids of a Visual Genome dense-captioning split, as the published numbers use them.

    Args:
        path: DenseCap's ``densecap_splits.json`` (``{"train": [ids], "val": [ids], "test": [ids]}``, the
            split of Johnson et al. that SCA and GRiT evaluate on), or a COCO-style file of one split such as
            GRiT's ``test.json`` (the ids of its ``images``).
        split: ``train``, ``val`` or ``test`` (a COCO-style file holds one split: its images, whatever this).

    Raises:
        ValueError: neither layout, or a split the file does not have.
    """
    data = load_json(path, what="Visual Genome dense-captioning split file")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return [int(image["id"]) for image in data["images"]]
    if isinstance(data, dict) and split in data and isinstance(data[split], list):
        return [int(i) for i in data[split]]
    raise ValueError(
        f"{path} has no {split!r} split: give DenseCap's densecap_splits.json ({{'train', 'val', 'test'}}) "
        "or a COCO-style split file such as GRiT's test.json."
    )


class VisualGenomeRegions(Dataset):
    """Visual Genome region descriptions, one item per image with all (or the first ``max_regions``) regions.

    Args:
        region_descriptions: ``region_descriptions.json``.
        image_dirs: folders holding ``<image_id>.jpg`` (``VG_100K``, ``VG_100K_2``).
        image_ids: keep only these images (a split), in this order; None keeps all with regions.
        split_file: the dense-captioning split file to take ``image_ids`` from (:func:`densecap_split_ids`):
            the split that VG dense-captioning results are reported on.
        split: the split of ``split_file`` (``train``, ``val``, ``test``).
        max_size: longer image side after resizing (None keeps the original size).
        max_regions: regions per image at most (the first ones), bounding the captioner's memory; for a random
            subset per step see :meth:`RegionBatch.sample_regions`.
    """

    def __init__(
        self,
        *,
        region_descriptions: str | os.PathLike[str],
        image_dirs: Sequence[str | os.PathLike[str]],
        image_ids: Sequence[int] | None = None,
        split_file: str | os.PathLike[str] | None = None,
        split: str = "train",
        max_size: int | None = 512,
        max_regions: int | None = None,
    ) -> None:
        if split_file is not None:
            if image_ids is not None:
                raise ValueError("Give image_ids or split_file, not both: the split file names the images.")
            image_ids = densecap_split_ids(split_file, split)
        data = load_json(region_descriptions, what="Visual Genome region_descriptions.json")
        if not isinstance(data, list) or (data and "regions" not in data[0]):
            raise ValueError(
                f"{region_descriptions} is not Visual Genome's region_descriptions.json (a list of "
                "{'id', 'regions'}); give that file."
            )
        self.image_dirs = [Path(d) for d in image_dirs]
        missing = [str(d) for d in self.image_dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"Visual Genome image folders not found: {missing}; check image_dirs.")
        by_id = {int(e["id"]): e["regions"] for e in data if e["regions"]}
        ids = list(by_id) if image_ids is None else [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"Images {unknown[:5]} have no regions in {region_descriptions}; fix image_ids.")
        self.records = [(i, by_id[i][:max_regions] if max_regions else by_id[i]) for i in ids]
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> RegionSample:
        image_id, regions = self.records[index]
        path = _find_image(self.image_dirs, f"{image_id}.jpg")
        image = read_image(path)
        h, w = image.shape[:2]
        xywh = np.array([[r["x"], r["y"], r["width"], r["height"]] for r in regions], dtype=np.float64)
        img, _, size = _resized(image, torch.zeros((0, h, w), dtype=torch.bool), self.max_size)
        # Rasterise at the final size from scaled boxes: sharper than resizing box masks.
        scale = np.array([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
        return RegionSample(
            image=img,
            masks=box_masks(torch.from_numpy(_xyxy(xywh.reshape(-1, 4) * scale)), size),
            captions=[[r["phrase"].strip()] for r in regions],
            region_ids=[str(r["region_id"]) for r in regions],
            info=ImageInfo(image_id=image_id, file_name=path.name, orig_size=(h, w), resized_size=size),
        )


class RefCocoRegions(Dataset):
    """Referring expressions (RefCOCO / RefCOCO+ / RefCOCOg layouts): one item per image of ``split``.

    Args:
        refs: the ``refs(umd).p`` (or ``refs(unc).p``, ``refs(google).p``) pickle.
        instances: the matching ``instances.json`` (COCO annotations with the referred objects' masks).
        image_dir: the COCO ``train2014`` folder.
        split: the refs' split to keep (``train``, ``val``, ``test``).
        max_size: longer image side after resizing (None keeps the original size).
    """

    def __init__(
        self,
        *,
        refs: str | os.PathLike[str],
        instances: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        split: str = "val",
        max_size: int | None = 512,
    ) -> None:
        refs_path = Path(refs)
        if not refs_path.is_file():
            raise FileNotFoundError(f"Refs pickle not found: {refs_path}; give refs(umd).p of the dataset.")
        with refs_path.open("rb") as f:
            all_refs = pickle.load(f)  # noqa: S301 - the user's own dataset file, as the official API loads it
        data = load_json(instances, what="COCO instances.json")
        self.images = {img["id"]: img for img in data["images"]}
        self.annotations = {ann["id"]: ann for ann in data["annotations"]}
        chosen = [r for r in all_refs if r["split"] == split]
        if not chosen:
            splits = sorted({r["split"] for r in all_refs})
            raise ValueError(f"No refs of split {split!r} in {refs_path}; it has {splits}.")
        grouped: dict[int, list[dict[str, Any]]] = {}
        for r in chosen:
            if r["ann_id"] not in self.annotations:
                raise ValueError(
                    f"Ref {r['ref_id']} names annotation {r['ann_id']}, absent from {instances}."
                )
            grouped.setdefault(r["image_id"], []).append(r)
        self.records = list(grouped.items())
        self.image_dir = Path(image_dir)
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> RegionSample:
        from pycocotools import mask as mask_utils

        image_id, refs = self.records[index]
        meta = self.images[image_id]
        image = read_image(_find_image([self.image_dir], meta["file_name"]))
        h, w = image.shape[:2]
        masks = []
        for r in refs:
            segm = self.annotations[r["ann_id"]]["segmentation"]
            rle = mask_utils.frPyObjects(segm, h, w)
            rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
            masks.append(torch.from_numpy(mask_utils.decode(rle).astype(bool)))
        img, resized, size = _resized(image, torch.stack(masks), self.max_size)
        return RegionSample(
            image=img,
            masks=resized,
            captions=[[s["sent"] for s in r["sentences"]] for r in refs],
            region_ids=[str(r["ref_id"]) for r in refs],
            info=ImageInfo(
                image_id=image_id, file_name=meta["file_name"], orig_size=(h, w), resized_size=size
            ),
        )


class PanopticRegionCaptions(Dataset):
    """Region captions derived from a panoptic dataset: weak class-name captions or synthetic descriptions.

    Args:
        dataset: yields :class:`~omtseg.types.Sample` with targets (a ``CocoPanopticDataset``), transformed.
        vocabulary: the classes its labels index.
        captions: ``"class_name"`` (``template`` over the class name) or ``"synthetic"``
            (:func:`synthetic_region_captions`), or a function ``(targets, vocabulary) -> list[str]``.
        template: the weak-supervision template.
    """

    def __init__(
        self,
        *,
        dataset: Dataset,
        vocabulary: Vocabulary,
        captions: str | Callable[[Targets, Vocabulary], list[str]] = "class_name",
        template: str = WEAK_TEMPLATE,
    ) -> None:
        if captions == "class_name":
            check_template(template)
            self.describe: Callable[[Targets, Vocabulary], list[str]] = lambda t, v: class_name_captions(
                t, v, template
            )
        elif captions == "synthetic":
            self.describe = synthetic_region_captions
        elif callable(captions):
            self.describe = captions
        else:
            raise ValueError(f"captions must be 'class_name', 'synthetic' or a function, got {captions!r}.")
        self.dataset = dataset
        self.vocabulary = vocabulary

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> RegionSample:
        sample: Sample = self.dataset[item]
        if sample.targets is None:
            raise ValueError(f"Sample {sample.info.file_name} has no targets; region captions need segments.")
        t = sample.targets
        key = sample.info.image_id
        return RegionSample(
            image=sample.image,
            masks=t.masks,
            captions=[[c] for c in self.describe(t, self.vocabulary)],
            region_ids=[f"{key}:{s}" for s in t.segment_ids.tolist()],
            info=sample.info,
        )
