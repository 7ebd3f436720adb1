"""Write panoptic predictions and ground truth in COCO panoptic format (one PNG per image plus a JSON).

The files are what the official tools read: ``pq_compute(gt_json, pred_json)`` of the COCO panoptic API,
hotcoco, or :func:`omtseg.evaluation.panoptic.pq_compute`. PNG colors encode segment ids
(``id = R + 256 G + 256^2 B``); category ids come from the :class:`Vocabulary`. Every file is written
atomically, the JSON last, so an interrupted export never leaves a JSON naming PNGs that do not exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from omtseg.evaluation.pq import paint_targets
from omtseg.io import id2rgb, save_image, save_json
from omtseg.types import ImageInfo, PanopticResult, Targets, Vocabulary


def _default_folder(json_path: Path) -> Path:
    return json_path.with_suffix("") if json_path.suffix == ".json" else json_path.parent / json_path.stem


def _png_name(info: ImageInfo) -> str:
    return Path(info.file_name).with_suffix(".png").as_posix()


def categories_json(vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """The vocabulary as COCO panoptic ``categories`` (id, name, isthing, color, supercategory)."""
    return [
        {"id": int(cid), "name": name, "isthing": int(thing), "color": list(color), "supercategory": ""}
        for cid, name, thing, color in zip(
            vocabulary.category_ids, vocabulary.names, vocabulary.is_thing, vocabulary.colors, strict=True
        )
    ]


def _segments_info(
    id_map: np.ndarray, ids: list[int], category_ids: list[int], crowd: list[bool]
) -> list[dict[str, Any]]:
    """COCO ``segments_info`` with area and [x, y, w, h] box measured on the map. id_map: (H, W)."""
    info = []
    for segment_id, category_id, is_crowd in zip(ids, category_ids, crowd, strict=True):
        mask = id_map == segment_id
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        bbox = [0, 0, 0, 0]
        if rows.size:
            bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        info.append(
            {
                "id": int(segment_id),
                "category_id": int(category_id),
                "iscrowd": int(is_crowd),
                "area": int(mask.sum()),
                "bbox": bbox,
            }
        )
    return info


def _check_unique(info: ImageInfo, seen: set[Any], png_names: set[str]) -> str:
    png = _png_name(info)
    if info.image_id in seen or png in png_names:
        raise ValueError(
            f"Image id {info.image_id!r} / file {png} is exported twice; give each image its own id and name."
        )
    seen.add(info.image_id)
    png_names.add(png)
    return png


def panoptic_annotation(
    info: ImageInfo, result: PanopticResult, vocabulary: Vocabulary
) -> tuple[dict[str, Any], np.ndarray]:
    """One image's panoptic prediction as a COCO panoptic ``annotations`` record and its PNG.

    Args:
        info: the image (``image_id``; ``file_name`` gives the PNG name, suffix ``.png``).
        result: ``id_map`` (H0, W0) and its segments (labels index ``vocabulary``).
        vocabulary: maps labels to category ids.

    Returns:
        ``{"image_id", "file_name", "segments_info"}`` (area and [x, y, w, h] box measured on the map) and
        the (H0, W0, 3) uint8 PNG colors ``id = R + 256 G + 256^2 B``.

    Raises:
        ValueError: a segment listed but absent from the id map, an id in the map with no segment, or a
            label outside the vocabulary.
    """
    id_map = result.id_map.detach().cpu().numpy()  # the predictions' int32: no int64 copy of a large map
    ids = [s.id for s in result.segments]
    present = set(np.unique(id_map).tolist()) - {0}
    if present != set(ids) or len(ids) != len(set(ids)):
        raise ValueError(
            f"Image {info.image_id!r}: segment ids {sorted(ids)} do not match the ids in the id map "
            f"{sorted(present)}; list each segment of the map once and drop empty ones."
        )
    labels = [s.label for s in result.segments]
    if any(not 0 <= label < len(vocabulary) for label in labels):
        raise ValueError(
            f"Image {info.image_id!r}: segment labels {labels} fall outside the vocabulary of "
            f"{len(vocabulary)} classes."
        )
    category_ids = [vocabulary.category_ids[label] for label in labels]
    annotation = {
        "image_id": info.image_id,
        "file_name": _png_name(info),
        "segments_info": _segments_info(id_map, ids, category_ids, [False] * len(ids)),
    }
    return annotation, id2rgb(id_map)


def semantic_category_map(labels: Tensor, vocabulary: Vocabulary) -> np.ndarray:
    """Per-pixel class indices (H0, W0) -> the semantic PNG's values: each pixel's category id, uint8, or
    uint16 when an id exceeds 255."""
    category_ids = np.asarray(vocabulary.category_ids)
    dtype = np.uint8 if category_ids.max() < 256 else np.uint16
    return category_ids[labels.cpu().numpy()].astype(dtype)


def export_panoptic_predictions(
    items: Iterable[tuple[ImageInfo, PanopticResult]],
    *,
    vocabulary: Vocabulary,
    json_path: str | os.PathLike[str],
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Write panoptic predictions as a COCO panoptic prediction JSON plus PNGs.

    Args:
        items: per image, its info and panoptic result (``id_map`` (H0, W0), segment labels index the
            vocabulary); an iterator is consumed once, so results can be streamed.
        vocabulary: maps labels to category ids.
        json_path: the JSON to write (``{"annotations": [...], "categories": [...]}``).
        folder: where the PNGs go; defaults to ``json_path`` without ``.json`` (panopticapi's default).

    Returns:
        The JSON path.

    Raises:
        ValueError: a segment listed but absent from the id map, an id in the map with no segment, a
            label outside the vocabulary, or an image exported twice.
    """
    json_path = Path(json_path)
    folder = _default_folder(json_path) if folder is None else Path(folder)
    annotations: list[dict[str, Any]] = []
    seen: set[Any] = set()
    png_names: set[str] = set()
    for info, result in items:
        _check_unique(info, seen, png_names)
        annotation, png = panoptic_annotation(info, result, vocabulary)
        save_image(png, folder / annotation["file_name"])
        annotations.append(annotation)
    save_json({"annotations": annotations, "categories": categories_json(vocabulary)}, json_path)
    return json_path


def export_panoptic_ground_truth(
    items: Iterable[tuple[ImageInfo, Targets]],
    *,
    vocabulary: Vocabulary,
    json_path: str | os.PathLike[str],
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ground truth as a COCO panoptic dataset JSON (images, annotations, categories) plus PNGs.

    Segments keep their dataset ids (``Targets.segment_ids``); crowd segments, which carry none, get the
    next free ids. Void and padding pixels are written as id 0. The PNGs have the targets' size (H, W).

    Args:
        items: per image, its info and ground truth (labels index the vocabulary).
        vocabulary: maps labels to category ids and says which classes are things.
        json_path: the JSON to write.
        folder: where the PNGs go; defaults to ``json_path`` without ``.json``.

    Returns:
        The JSON path.

    Raises:
        ValueError: segment ids that are not positive and unique, or an image exported twice.
    """
    json_path = Path(json_path)
    folder = _default_folder(json_path) if folder is None else Path(folder)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[Any] = set()
    png_names: set[str] = set()
    for info, targets in items:
        png = _check_unique(info, seen, png_names)
        ids = [int(i) for i in targets.segment_ids.tolist()]
        if any(i <= 0 for i in ids) or len(set(ids)) != len(ids):
            raise ValueError(
                f"Image {info.image_id!r}: Targets.segment_ids {ids} must be positive and unique to be "
                "exported; fix the dataset's segment ids."
            )
        first_crowd_id = max(ids, default=0) + 1
        ids += list(range(first_crowd_id, first_crowd_id + targets.crowd_masks.shape[0]))
        id_map_t, _, labels, crowd = paint_targets(targets, ids)
        id_map = id_map_t.cpu().numpy()
        height, width = id_map.shape
        category_ids = [vocabulary.category_ids[label] for label in labels.tolist()]
        save_image(id2rgb(id_map), folder / png)
        images.append({"id": info.image_id, "file_name": info.file_name, "height": height, "width": width})
        annotations.append(
            {
                "image_id": info.image_id,
                "file_name": png,
                "segments_info": _segments_info(id_map, ids, category_ids, crowd.tolist()),
            }
        )
    save_json(
        {"images": images, "annotations": annotations, "categories": categories_json(vocabulary)}, json_path
    )
    return json_path
