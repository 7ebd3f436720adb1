"""ADE20K-847 (the full ADE20K_2021_17_01 release) -> ``images_detectron2`` + uint16 TIFF label maps.

Raw inputs (``src/ADE20K_2021_17_01/``, from the registered download at
https://groups.csail.mit.edu/vision/datasets/ADE20K/):

- ``index_ade20k.pkl``: a pickled dict whose ``filename`` and ``folder`` lists name every image; folders are
  relative to the directory that holds ``ADE20K_2021_17_01`` (``ADE20K_2021_17_01/images/ADE/training/...``);
- per image ``X.jpg`` and ``X_seg.png`` beside it, where the object class of a pixel is
  ``R // 10 * 256 + G``.

The 847 evaluated classes and their object class ids are those of the open-vocabulary projects
(``prepare_ade20k_full_sem_seg.py`` of NVlabs/ODISE and bytedance/fc-clip), kept as the id column of
``assets/vocabularies/ade20k_847.txt``; every other class is ignore (65535). The split is the filename's
second field (``ADE_val_*`` -> validation, everything else -> training).

The files are those of the reference script, pixel for pixel: images whose short side exceeds 512 px are
shrunk to 512 with OpenCV's ``INTER_LINEAR`` (image) and ``INTER_NEAREST`` (labels), restated without OpenCV
in :mod:`.resize`; every image, shrunk or not, is decoded as PIL reads it (grey stays grey) and re-encoded by
PIL's JPEG encoder at its default settings (quality 75). An image in another mode (CMYK), which the
reference script cannot write, is converted to RGB.

Outputs (``dst/ADE20K_2021_17_01/``): ``images_detectron2/{split_dir}/X.jpg`` and
``annotations_detectron2/{split_dir}/X.tif`` (uint16 labels 0..846).

The index is a pickle: load only the file of the official download.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np

from omtseg.data.benchmark_registry import zero_shot_vocabulary
from omtseg.data.prepare._common import (
    LabelledImage,
    PrepareStats,
    find_raw,
    output_paths,
    write_labelled_images,
)
from omtseg.data.prepare.resize import resize_linear, resize_nearest, shrunk_size
from omtseg.io import read_image

DOWNLOAD = (
    "https://groups.csail.mit.edu/vision/datasets/ADE20K/ (register, then download ADE20K_2021_17_01.zip)"
)
IGNORE = 65535
MAX_SHORT_SIDE = 512


def class_lookup() -> np.ndarray:
    """(max_id + 1,) uint16 table: ADE20K object class id -> ADE20K-847 label, 65535 for the others."""
    ids = zero_shot_vocabulary("ade20k_847").category_ids
    table = np.full(max(ids) + 1, IGNORE, dtype=np.uint16)
    table[list(ids)] = np.arange(len(ids), dtype=np.uint16)
    return table


def class_ids_from_seg(seg: np.ndarray) -> np.ndarray:
    """An ADE20K ``*_seg.png`` (H, W, 3) -> (H, W) int32 object class ids ``R // 10 * 256 + G``."""
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def map_classes(class_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Object class ids (any shape) -> uint16 ADE20K-847 labels; ids beyond the table are ignore."""
    out = np.full(class_ids.shape, IGNORE, dtype=np.uint16)
    known = class_ids < len(table)
    out[known] = table[class_ids[known]]
    return out


def _load_index(path: Path) -> tuple[list[str], list[str]]:
    with path.open("rb") as f:
        index = pickle.load(f)
    if not isinstance(index, dict) or "filename" not in index or "folder" not in index:
        raise ValueError(
            f"{path} is not the ADE20K index (a dict with 'filename' and 'folder' lists); use the "
            "index_ade20k.pkl of ADE20K_2021_17_01."
        )
    names, folders = list(index["filename"]), list(index["folder"])
    if len(names) != len(folders):
        raise ValueError(f"{path}: {len(names)} filenames but {len(folders)} folders; the index is damaged.")
    return [str(n) for n in names], [str(f) for f in folders]


def prepare_ade20k_847(
    src: str | Path,
    dst: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
) -> PrepareStats:
    """Build ``dst/ADE20K_2021_17_01/{images,annotations}_detectron2`` from the full ADE20K release."""
    raw = find_raw(src, "ADE20K_2021_17_01", ["index_ade20k.pkl"], DOWNLOAD)
    names, folders = _load_index(raw / "index_ade20k.pkl")
    table = class_lookup()
    items = []
    for name, folder in zip(names, folders, strict=True):
        split = "val" if name.split("_")[1:2] == ["val"] else "train"
        if split in splits:
            image_path = raw.parent / folder / name
            image, label = output_paths("ade20k_847", split, dst, image_path.stem)
            items.append(LabelledImage(image, label, partial(_ade847_image, image_path, raw, table)))
    return write_labelled_images(items, "ADE20K-847", overwrite=overwrite, show_progress=show_progress)


def _ade847_image(image_path: Path, raw: Path, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ADE20K image and its ADE20K-847 labels, shrunk as the reference script does."""
    seg_path = image_path.with_name(f"{image_path.stem}_seg.png")
    if not image_path.is_file() or not seg_path.is_file():
        raise FileNotFoundError(
            f"{image_path if not image_path.is_file() else seg_path} is listed in index_ade20k.pkl but "
            f"missing; folders are relative to {raw.parent}. Extract the full download there."
        )
    image = read_image(image_path, mode="", exif=False)  # (H, W) grey or (H, W, 3), as the reference reads it
    if image.ndim == 3 and image.shape[2] != 3:
        image = read_image(image_path, mode="RGB", exif=False)
    class_ids = class_ids_from_seg(read_image(seg_path, mode="RGB", exif=False))
    if class_ids.shape != image.shape[:2]:
        raise ValueError(f"{seg_path} and {image_path} differ in size; the download is damaged.")
    size = shrunk_size(class_ids.shape[0], class_ids.shape[1], MAX_SHORT_SIDE)
    if size is not None:
        image, class_ids = resize_linear(image, size), resize_nearest(class_ids, size)
    # The image is re-encoded with PIL's JPEG defaults (quality 75), as the reference saves it.
    return image, map_classes(class_ids, table)
