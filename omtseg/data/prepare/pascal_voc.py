"""Pascal VOC-20 (VOC2012 segmentation) -> ``pascal_voc_d2/{images,annotations_pascal20}``.

Raw inputs (``src/VOCdevkit/VOC2012/``, from VOCtrainval_11-May-2012.tar): ``JPEGImages/``,
``SegmentationClass/*.png`` (palette PNGs: 0 background, 1..20 classes, 255 object borders) and
``ImageSets/Segmentation/{train,val}.txt``.

VOC-20 leaves the background out: background and borders become ignore (255), class ``k`` becomes label
``k - 1``, as the open-vocabulary projects' ``prepare_pascal_voc_sem_seg.py`` writes ``annotations_pascal20``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omtseg.data.benchmark_vocab import SPLIT_DIRS
from omtseg.data.prepare._common import (
    PrepareStats,
    copy_file,
    find_raw,
    is_done,
    progress,
    read_split_list,
    require,
    save_label,
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
    out = Path(dst) / "pascal_voc_d2"
    items = []
    for split in splits:
        list_file = require(
            raw / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC2012 {split} list", DOWNLOAD
        )
        items += [(name, SPLIT_DIRS[split]) for name in read_split_list(list_file)]
    stats = PrepareStats()
    for name, split_dir in progress(items, "Pascal VOC-20", show_progress):
        copy_file(
            raw / "JPEGImages" / f"{name}.jpg",
            out / "images" / split_dir / f"{name}.jpg",
            stats,
            overwrite=overwrite,
        )
        out_label = out / "annotations_pascal20" / split_dir / f"{name}.png"
        if is_done([out_label], overwrite):
            stats.count("labels", wrote=False)
            continue
        indices = read_image(raw / "SegmentationClass" / f"{name}.png", mode="")
        if indices.ndim != 2:
            raise ValueError(
                f"{raw / 'SegmentationClass' / f'{name}.png'} is not a palette PNG; use the "
                "SegmentationClass folder of the official VOC2012 tar."
            )
        save_label(voc20_labels(indices), out_label, stats, overwrite=overwrite, kind="labels")
    return stats
