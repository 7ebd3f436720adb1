"""Pascal VOC-20 (VOC2012 segmentation) -> ``pascal_voc_d2/{images,annotations_pascal20}``.

Raw inputs (``src/VOCdevkit/VOC2012/``, from VOCtrainval_11-May-2012.tar): ``JPEGImages/``,
``SegmentationClass/*.png`` (palette PNGs: 0 background, 1..20 classes, 255 object borders) and
``ImageSets/Segmentation/{train,val}.txt``.

VOC-20 leaves the background out: background and borders become ignore (255), class ``k`` becomes label
``k - 1``, as the open-vocabulary projects' ``prepare_pascal_voc_sem_seg.py`` writes ``annotations_pascal20``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from omtseg.data.prepare._common import (
    LabelledImage,
    PrepareStats,
    find_raw,
    output_paths,
    read_split_list,
    require,
    write_labelled_images,
)
from omtseg.io import read_image

DOWNLOAD = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"


def voc20_labels(indices: np.ndarray) -> np.ndarray:
    """VOC palette indices (0 background, 1..20, 255 border) -> uint8 labels 0..19 with 255 = ignore."""
    values = np.unique(indices)
    bad = values[(values > 20) & (values != 255)]
    if bad.size:
        raise ValueError(f"VOC label values {bad.tolist()} are not classes (0..20) or the border (255).")
    indices = indices.astype(np.int64)
    return np.where((indices == 0) | (indices == 255), 255, indices - 1).astype(np.uint8)


def prepare_pascal_voc_20(
    src: str | Path,
    dst: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
) -> PrepareStats:
    """Build ``dst/pascal_voc_d2/{images,annotations_pascal20}`` from VOC2012."""
    raw = find_raw(
        src, "VOCdevkit/VOC2012", ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"], DOWNLOAD
    )
    items = []
    for split in splits:
        list_file = require(
            raw / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC2012 {split} list", DOWNLOAD
        )
        for name in read_split_list(list_file):
            image, label = output_paths("pascal_voc_20", split, dst, name)
            raw_image = raw / "JPEGImages" / f"{name}.jpg"
            items.append(LabelledImage.copied(raw_image, image, label, partial(_voc20_file, raw, name)))
    return write_labelled_images(items, "Pascal VOC-20", overwrite=overwrite, show_progress=show_progress)


def _voc20_file(raw: Path, name: str) -> np.ndarray:
    """VOC-20 labels of image ``name`` from its ``SegmentationClass`` PNG."""
    seg = raw / "SegmentationClass" / f"{name}.png"
    indices = read_image(seg, mode="", exif=False)
    if indices.ndim != 2:
        raise ValueError(
            f"{seg} is not a palette PNG; use the SegmentationClass folder of the official VOC2012 tar."
        )
    return voc20_labels(indices)
