"""ADE20K-150 (ADEChallengeData2016 + the instance annotations) -> semantic, panoptic and instance layouts.

Raw inputs (``src/ADEChallengeData2016/``):

- ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` (8-bit, 0 = other,
  ``k`` = class ``k - 1``) from ADEChallengeData2016.zip;
- ``annotations_instance/{training,validation}/*.png`` from annotations_instance.tar (the instance track of
  the 2017 challenge): R = instance class (1..100, the j-th thing class of ADE20K-150), G = instance number
  (0 = none).

Outputs (``dst/ADEChallengeData2016/``), as Mask2Former's ``prepare_ade20k_{sem,pan,ins}_seg.py`` make them:

- ``annotations_detectron2/{split_dir}/*.png``: labels 0..149, 255 = ignore;
- ``ade20k_panoptic_{train,val}.json`` + ``ade20k_panoptic_{train,val}/*.png`` (COCO panoptic, category ids
  0..149): one segment per stuff class from the semantic map, one per instance on top of it;
- ``ade20k_instance_{train,val}.json`` (COCO instances, RLE masks, the 100 thing classes).

Segment ids are numbered 1, 2, ... per image (the reference draws random colours; ids do not change PQ). By
default the panoptic JSON is the reference ``prepare_ade20k_pan_seg.py``'s: a stuff segment's area and box are
measured on the semantic map before instances are pasted over it, and a stuff segment that instances cover
completely stays listed (with no pixel in the PNG). panopticapi takes ground-truth areas from the JSON and
counts such a segment as a false negative, so published ADE20K-150 PQ was measured on exactly these files.
``cleaned=True`` writes the variant measured on the final id map instead (the JSON lists exactly the ids in
the PNG, with their visible areas); tests/data/test_prepare.py measures the PQ it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from omtseg.data.benchmark_registry import (
    SPLIT_DIRS,
    ade20k_instance_labels,
    benchmark_spec,
    zero_shot_vocabulary,
)
from omtseg.data.prepare._common import (
    PrepareStats,
    copy_file,
    find_raw,
    output_paths,
    progress,
    require,
    save_label,
)
from omtseg.io import id2rgb, read_image, save_image, save_json

DOWNLOAD = (
    "http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip; instance annotations: "
    "http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar, extracted into "
    "ADEChallengeData2016/)"
)


def semantic_labels(raw: np.ndarray) -> np.ndarray:
    """ADEChallengeData2016 annotation values (0 = other, 1..150) -> labels 0..149 with 255 = ignore."""
    if raw.ndim != 2:
        raise ValueError("ADE20K-150 annotations are single-channel PNGs; use the official annotations.")
    if raw.max(initial=0) > 150:
        raise ValueError(
            f"ADE20K-150 annotation holds value {int(raw.max())} > 150; it is not an ADE20K-150 map."
        )
    return (raw.astype(np.int64) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    y, x = int(rows.min()), int(cols.min())
    return [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1]


def _segment(segment_id: int, label: int, mask: np.ndarray) -> dict[str, Any]:
    return {
        "id": segment_id,
        "category_id": label,
        "area": int(mask.sum()),
        "bbox": _bbox(mask),
        "iscrowd": 0,
    }


def panoptic_from_annotations(
    semantic: np.ndarray,
    instance: np.ndarray,
    is_thing: tuple[bool, ...],
    instance_labels: dict[int, int],
    *,
    cleaned: bool = False,
) -> tuple[np.ndarray, list[dict[str, Any]], list[tuple[int, np.ndarray]]]:
    """Combine a semantic map (labels, 255 ignore) and an instance PNG (H, W, 3) into a panoptic id map.

    One segment per stuff class of the semantic map, then one per instance, pasted over the stuff.

    Args:
        semantic: (H, W) labels 0..149, 255 = ignore.
        instance: (H, W, 3) instance PNG (R = instance class 1..100, G = instance number, 0 = none).
        is_thing: 150 flags.
        instance_labels: instance class -> label.
        cleaned: measure areas and boxes on the final id map and drop segments left without pixels,
            instead of the reference's areas (stuff measured before the paste, every segment listed).

    Returns:
        The (H, W) int64 id map (0 = void), its COCO ``segments_info`` and the instances as (label, mask).

    Raises:
        ValueError: an instance spans several classes, or its class is not one of the 100 instance classes.
    """
    ids = np.zeros(semantic.shape, dtype=np.int64)
    labels: list[int] = []
    segments = []
    for label in np.unique(semantic).tolist():
        if label != 255 and not is_thing[label]:
            mask = semantic == label
            ids[mask] = len(labels) + 1
            labels.append(label)
            segments.append(_segment(len(labels), label, mask))
    instances = []
    for number in np.unique(instance[..., 1]).tolist():
        if number == 0:
            continue
        mask = instance[..., 1] == number
        classes = np.unique(instance[..., 0][mask]).tolist()
        if len(classes) != 1 or classes[0] not in instance_labels:
            raise ValueError(
                f"Instance {number} has instance classes {classes}; each instance needs exactly one class "
                "in 1..100. The instance PNG is damaged; extract annotations_instance.tar again."
            )
        label = instance_labels[classes[0]]
        ids[mask] = len(labels) + 1  # instances are pasted over stuff, as the reference script does
        labels.append(label)
        segments.append(_segment(len(labels), label, mask))
        instances.append((label, mask))
    if cleaned:
        present = [s for s in segments if (ids == s["id"]).any()]
        segments = [_segment(s["id"], s["category_id"], ids == s["id"]) for s in present]
    return ids, segments, instances


def _instance_record(label: int, mask: np.ndarray, image_id: str, ann_id: int) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label,
        "iscrowd": 0,
        "bbox": _bbox(mask),
        "area": int(mask_util.area(rle)),
        "segmentation": rle,
    }


def prepare_ade20k_150(
    src: str | Path,
    dst: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    overwrite: bool = False,
    show_progress: bool = True,
    cleaned_panoptic: bool = False,
) -> PrepareStats:
    """Build the ADE20K-150 semantic, panoptic and instance layouts under ``dst/ADEChallengeData2016``.

    Images are copied unless ``src`` and ``dst`` hold the same ADEChallengeData2016 folder (preparing in
    place). Existing outputs are kept; the two JSON files of a split are rebuilt unless both exist.
    ``cleaned_panoptic`` writes the cleaned panoptic JSON (see the module docstring), not the reference's.
    """
    raw = find_raw(src, "ADEChallengeData2016", ["images", "annotations", "annotations_instance"], DOWNLOAD)
    layout = benchmark_spec("ade20k_150_panoptic")
    assert layout.panoptic_json and layout.panoptic_dir and layout.instance_json
    vocabulary = zero_shot_vocabulary("ade20k_150")
    instance_labels = ade20k_instance_labels()
    categories = [
        {"id": cid, "name": ", ".join(syn), "isthing": int(thing), "color": list(color)}
        for cid, syn, thing, color in zip(
            vocabulary.category_ids, vocabulary.synonyms, vocabulary.is_thing, vocabulary.colors, strict=True
        )
    ]
    stats = PrepareStats()
    for split in splits:
        split_dir = SPLIT_DIRS[split]
        image_dir = require(raw / "images" / split_dir, f"ADE20K-150 {split} images", DOWNLOAD)
        files = sorted(p.name for p in image_dir.glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"No .jpg image in {image_dir}; extract ADEChallengeData2016.zip again.")
        out_dir = layout.path(layout.images, split, dst)
        in_place = out_dir.exists() and out_dir.resolve() == image_dir.resolve()
        pan_json = layout.path(layout.panoptic_json, split, dst)
        pan_dir = layout.path(layout.panoptic_dir, split, dst)
        ins_json = layout.path(layout.instance_json, split, dst)
        rebuild_json = overwrite or not (pan_json.exists() and ins_json.exists())
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        for file_name in progress(files, f"ADE20K-150 {split}", show_progress):
            stem = Path(file_name).stem
            out_image, sem_png = output_paths("ade20k_150", split, dst, stem)
            if not in_place:
                copy_file(image_dir / file_name, out_image, stats, overwrite=overwrite)
            pan_png = pan_dir / f"{stem}.png"
            if not rebuild_json and sem_png.exists() and pan_png.exists():
                stats.count("semantic", wrote=False)
                stats.count("panoptic", wrote=False)
                continue
            labels = read_image(raw / "annotations" / split_dir / f"{stem}.png", mode="", exif=False)
            semantic = semantic_labels(labels)
            save_label(semantic, sem_png, stats, overwrite=overwrite, kind="semantic")
            instance = read_image(
                raw / "annotations_instance" / split_dir / f"{stem}.png", mode="RGB", exif=False
            )
            if instance.shape[:2] != semantic.shape:
                raise ValueError(
                    f"Instance PNG of {stem} is {instance.shape[1]}x{instance.shape[0]} but its semantic map "
                    f"is {semantic.shape[1]}x{semantic.shape[0]}; the annotation folders do not match."
                )
            ids, segments, things = panoptic_from_annotations(
                semantic, instance, vocabulary.is_thing, instance_labels, cleaned=cleaned_panoptic
            )
            if overwrite or not pan_png.exists():
                save_image(id2rgb(ids), pan_png)
                stats.count("panoptic", wrote=True)
            else:
                stats.count("panoptic", wrote=False)
            h, w = semantic.shape
            images.append({"id": stem, "file_name": file_name, "width": w, "height": h})
            annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments})
            instances += [
                _instance_record(label, mask, stem, len(instances) + k + 1)
                for k, (label, mask) in enumerate(things)
            ]
        if rebuild_json:
            _save(pan_json, {"images": images, "annotations": annotations, "categories": categories}, stats)
            things_only = [c for c in categories if c["isthing"]]
            _save(ins_json, {"images": images, "annotations": instances, "categories": things_only}, stats)
        else:
            for _ in (pan_json, ins_json):
                stats.count("json", wrote=False)
    return stats


def _save(path: Path, data: dict[str, Any], stats: PrepareStats) -> None:
    save_json(data, path)
    stats.count("json", wrote=True)
