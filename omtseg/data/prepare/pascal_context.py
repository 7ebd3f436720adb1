"""Pascal Context-59 and -459 (VOC2010 images + the PASCAL-Context annotations) -> ``pascal_ctx_d2``.

Raw inputs (``src/VOCdevkit/VOC2010/``, as the detectron2-based open-vocabulary projects expect them):

- ``JPEGImages/`` and ``ImageSets/Main/{train,val}.txt`` from VOCtrainval_03-May-2010.tar;
- Context-59: ``trainval_merged.json`` (the PASCAL-in-Detail annotation file): ``images`` (``image_id``,
  ``file_name``, ``height``, ``width``, ``phase`` train/val) and ``annos_segmentation`` (``image_id``,
  ``category_id``, COCO RLE ``segmentation``), category ids in the 459-class numbering;
- Context-459: ``trainval/*.mat`` from trainval.tar.gz (``LabelMap``: uint16, 0 = unlabelled, 1..459).

Outputs (``dst/pascal_ctx_d2/``): ``images/{split_dir}/*.jpg``, ``annotations_ctx59/{split_dir}/*.png``
(labels 0..58, 255 = ignore) and ``annotations_ctx459/{split_dir}/*.tif`` (uint16 labels 0..458, 65535 =
ignore).

Context-59 paints each image's segmentation annotations in file order (a later one wins where they overlap,
as the Detail API's ``getMask`` does); pixels of no annotation, or of a class outside the 59, are ignore.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from omtseg.data.benchmark_registry import zero_shot_vocabulary
from omtseg.data.prepare._common import (
    LabelledImage,
    PrepareStats,
    find_raw,
    output_paths,
    read_split_list,
    require,
    write_labelled_images,
)
from omtseg.io import load_json

VOC2010 = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
CONTEXT = "https://www.cs.stanford.edu/~roozbeh/pascal-context/ (trainval.tar.gz, extracted into VOC2010/)"
MERGED = "https://codalabuser.blob.core.windows.net/public/trainval_merged.json (saved into VOC2010/)"


def decode_rle(segmentation: dict[str, Any]) -> np.ndarray:
    """A COCO RLE (compressed string or uncompressed count list) -> (H, W) bool mask."""
    if isinstance(segmentation.get("counts"), list):
        h, w = segmentation["size"]
        segmentation = mask_util.frPyObjects(segmentation, h, w)
    return mask_util.decode(segmentation).astype(bool)


def context59_labels(
    height: int, width: int, annotations: list[dict[str, Any]], lookup: dict[int, int]
) -> np.ndarray:
    """Paint one image's Detail annotations into (H, W) uint8 Context-59 labels, 255 = ignore."""
    labels = np.full((height, width), 255, dtype=np.uint8)
    for ann in annotations:
        mask = decode_rle(ann["segmentation"])
        if mask.shape != labels.shape:
            raise ValueError(
                f"Annotation {ann.get('id')} of image {ann['image_id']} is {mask.shape[1]}x{mask.shape[0]}, "
                f"the image is {width}x{height}; trainval_merged.json is damaged, download it again."
            )
        labels[mask] = lookup.get(int(ann["category_id"]), 255)
    return labels


def context459_labels(label_map: np.ndarray) -> np.ndarray:
    """A PASCAL-Context ``LabelMap`` (0 = unlabelled, 1..459) -> uint16 labels 0..458, 65535 = ignore."""
    label_map = label_map.astype(np.int64)
    if label_map.min(initial=0) < 0 or label_map.max(initial=0) > 459:
        raise ValueError(f"LabelMap values must lie in 0..459, got {int(label_map.max())}.")
    return np.where(label_map == 0, 65535, label_map - 1).astype(np.uint16)


def prepare_pascal_context_59(
    src: str | Path,
    dst: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
) -> PrepareStats:
    """Build ``dst/pascal_ctx_d2/{images,annotations_ctx59}`` from VOC2010 and ``trainval_merged.json``."""
    raw = find_raw(src, "VOCdevkit/VOC2010", ["JPEGImages"], VOC2010)
    data = load_json(
        require(raw / "trainval_merged.json", "trainval_merged.json", MERGED), "trainval_merged.json"
    )
    if not isinstance(data, dict) or "images" not in data or "annos_segmentation" not in data:
        raise ValueError(
            f"{raw / 'trainval_merged.json'} lacks 'images' or 'annos_segmentation'; it is not the "
            f"PASCAL-in-Detail file. Get it from {MERGED}."
        )
    vocabulary = zero_shot_vocabulary("pascal_context_59")
    lookup = {cid: k for k, cid in enumerate(vocabulary.category_ids)}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annos_segmentation"]:
        by_image[ann["image_id"]].append(ann)
    wanted = set(splits)
    items = []
    for img in data["images"]:
        if img.get("phase") in wanted:
            image, label = output_paths("pascal_context_59", img["phase"], dst, Path(img["file_name"]).stem)
            size, annotations = (int(img["height"]), int(img["width"])), by_image[img["image_id"]]
            labels = partial(context59_labels, *size, annotations, lookup)
            items.append(LabelledImage.copied(raw / "JPEGImages" / img["file_name"], image, label, labels))
    return write_labelled_images(items, "Pascal Context-59", overwrite=overwrite, show_progress=show_progress)


def prepare_pascal_context_459(
    src: str | Path,
    dst: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
) -> PrepareStats:
    """Build ``dst/pascal_ctx_d2/{images,annotations_ctx459}`` from VOC2010 and the ``.mat`` label maps.

    The split lists are VOC2010's ``ImageSets/Main/{train,val}.txt`` (PASCAL-Context annotates exactly
    these 4998 + 5105 images).
    """
    from scipy.io import loadmat  # scipy.io is slow to import; only this command needs it

    raw = find_raw(src, "VOCdevkit/VOC2010", ["JPEGImages", "ImageSets/Main"], VOC2010)
    mat_dir = require(raw / "trainval", "PASCAL-Context label maps (VOC2010/trainval/*.mat)", CONTEXT)
    items = []
    for split in splits:
        list_file = require(raw / "ImageSets" / "Main" / f"{split}.txt", f"VOC2010 {split} list", VOC2010)
        for name in read_split_list(list_file):
            image, label = output_paths("pascal_context_459", split, dst, name)
            labels = partial(_context459_file, mat_dir, name, loadmat)
            items.append(LabelledImage.copied(raw / "JPEGImages" / f"{name}.jpg", image, label, labels))
    return write_labelled_images(
        items, "Pascal Context-459", overwrite=overwrite, show_progress=show_progress
    )


def _context459_file(mat_dir: Path, name: str, loadmat: Callable[[str], dict[str, Any]]) -> np.ndarray:
    """Context-459 labels of image ``name`` from its ``.mat`` label map."""
    mat = require(mat_dir / f"{name}.mat", f"PASCAL-Context label map of {name}", CONTEXT)
    contents = loadmat(str(mat))
    if "LabelMap" not in contents:
        raise ValueError(f"{mat} has no 'LabelMap'; it is not a PASCAL-Context label file.")
    return context459_labels(contents["LabelMap"])
