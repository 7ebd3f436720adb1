"""Panoptic ground truth and perturbed predictions for the PQ tests, written in COCO panoptic format.

Predictions are made from the ground truth by the mistakes PQ has to score: missed, shifted, split,
thinned (IoU near 0.5), relabelled and merged segments, unpredicted (void) regions and extra false positives,
some lying on ground-truth void or crowd regions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omtseg.io import id2rgb, read_panoptic_png, save_image
from omtseg.types import PanopticResult, PanopticSegment, Targets, Vocabulary

REPO = Path(__file__).resolve().parents[2]

# Six categories with non-contiguous ids, things and stuff mixed.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 18, "name": "dog", "isthing": 1, "color": [255, 179, 240]},
    {"id": 120, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 149, "name": "grass", "isthing": 0, "color": [0, 192, 0]},
    {"id": 184, "name": "tree", "isthing": 0, "color": [107, 142, 35]},
]


def sample_root() -> Path | None:
    """The real two-image COCO panoptic sample: the test fixture copy, else the shared data folder."""
    candidates = (REPO / "tests/fixtures", REPO.parent / "shared/data")
    for root in (c / "coco_panoptic_sample" for c in candidates):
        if (root / "panoptic.json").is_file():
            return root
    return None


def _new_id(rng: np.random.Generator, used: set[int]) -> int:
    while True:
        candidate = int(rng.integers(1, 256**3))
        if candidate not in used:
            used.add(candidate)
            return candidate


def _box(rng: np.random.Generator, h: int, w: int, max_frac: float = 0.6) -> tuple[slice, slice]:
    bh, bw = int(rng.integers(1, max(2, int(h * max_frac)))), int(rng.integers(1, max(2, int(w * max_frac))))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return slice(y, y + bh), slice(x, x + bw)


def random_ground_truth(
    rng: np.random.Generator, h: int, w: int, num_segments: int, categories: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H, W) id map of overlapping boxes with void patches, and its segments_info (some crowd)."""
    id_map = np.zeros((h, w), dtype=np.int64)
    used: set[int] = set()
    cats = {}
    for _ in range(num_segments):
        segment_id = _new_id(rng, used)
        id_map[_box(rng, h, w)] = segment_id
        cats[segment_id] = categories[int(rng.integers(len(categories)))]["id"]
    for _ in range(int(rng.integers(0, 3))):
        id_map[_box(rng, h, w, 0.3)] = 0
    segments = []
    for segment_id in np.unique(id_map).tolist():
        if segment_id:
            segments.append(
                {
                    "id": segment_id,
                    "category_id": cats[segment_id],
                    "iscrowd": int(rng.random() < 0.2),
                    "area": int((id_map == segment_id).sum()),
                }
            )
    return id_map, segments


def perturb(
    rng: np.random.Generator,
    gt_map: np.ndarray,
    segments: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A prediction made from the ground truth with typical mistakes; returns (id map, segments_info)."""
    h, w = gt_map.shape
    pred = np.zeros_like(gt_map)
    used: set[int] = set()
    cats: dict[int, int] = {}
    cat_ids = [c["id"] for c in categories]
    for seg in segments:
        mask = gt_map == seg["id"]
        r = rng.random()
        if r < 0.12:
            continue  # missed
        if r < 0.3:
            mask = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), (0, 1))
        elif r < 0.4:
            cols = np.flatnonzero(mask.any(0))
            half = mask & (np.arange(w) < cols[len(cols) // 2])[None]
            extra_id = _new_id(rng, used)
            pred[half] = extra_id
            cats[extra_id] = seg["category_id"]
            mask = mask & ~half
        elif r < 0.55:
            mask = mask & (rng.random(mask.shape) < rng.uniform(0.4, 0.8))
        segment_id = _new_id(rng, used)
        relabel = rng.random() < 0.12
        cats[segment_id] = cat_ids[int(rng.integers(len(cat_ids)))] if relabel else seg["category_id"]
        pred[mask] = segment_id
    present = [i for i in np.unique(pred).tolist() if i]
    if len(present) >= 2 and rng.random() < 0.5:  # merge two segments under the first one's id and class
        a, b = rng.choice(present, 2, replace=False).tolist()
        pred[pred == b] = a
    for _ in range(int(rng.integers(0, 3))):  # extra false positives, anywhere (also on void and crowd)
        segment_id = _new_id(rng, used)
        pred[_box(rng, h, w, 0.4)] = segment_id
        cats[segment_id] = cat_ids[int(rng.integers(len(cat_ids)))]
    if rng.random() < 0.3:
        pred[_box(rng, h, w, 0.3)] = 0
    info = [{"id": i, "category_id": cats[i], "iscrowd": 0} for i in np.unique(pred).tolist() if i]
    return pred, info


def write_dataset(
    root: Path,
    name: str,
    images: list[tuple[Any, np.ndarray, list[dict[str, Any]]]],
    categories: list[dict[str, Any]],
) -> Path:
    """Write ``root/name.json`` and PNGs in ``root/name/``; images are (image_id, id_map, segments_info)."""
    annotations = []
    for image_id, id_map, segments in images:
        file_name = f"{image_id}.png"
        save_image(id2rgb(id_map), root / name / file_name)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
    path = root / f"{name}.json"
    entries = [
        {"id": i, "file_name": f"{i}.jpg", "height": m.shape[0], "width": m.shape[1]} for i, m, _ in images
    ]
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def random_case(root: Path, seed: int, num_images: int = 3) -> tuple[Path, Path]:
    """Random ground truth at odd sizes and its perturbed predictions; returns (gt json, pred json)."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for i in range(num_images):
        h, w = int(rng.integers(9, 70)), int(rng.integers(9, 70))
        gt_map, segments = random_ground_truth(rng, h, w, int(rng.integers(0, 12)), CATEGORIES)
        pred_map, pred_segments = perturb(rng, gt_map, segments, CATEGORIES)
        gts.append((100 + i, gt_map, segments))
        preds.append((100 + i, pred_map, pred_segments))
    return write_dataset(root, "gt", gts, CATEGORIES), write_dataset(root, "pred", preds, CATEGORIES)


def sample_case(root: Path, sample: Path, seed: int) -> tuple[Path, list[dict[str, Any]]]:
    """Perturbed predictions of the real sample; returns (pred json, the sample's categories)."""
    gt = json.loads((sample / "panoptic.json").read_text())
    rng = np.random.default_rng(seed)
    preds = []
    for ann in gt["annotations"]:
        gt_map = read_panoptic_png(sample / "panoptic" / ann["file_name"])
        pred_map, segments = perturb(rng, gt_map, ann["segments_info"], gt["categories"])
        preds.append((ann["image_id"], pred_map, segments))
    return write_dataset(root, "pred", preds, gt["categories"]), gt["categories"]


def vocabulary_of(categories: list[dict[str, Any]]) -> Vocabulary:
    """A vocabulary whose positions follow ``categories`` (the JSON order)."""
    return Vocabulary(
        names=tuple(c["name"] for c in categories),
        synonyms=tuple((c["name"],) for c in categories),
        is_thing=tuple(bool(c["isthing"]) for c in categories),
        category_ids=tuple(c["id"] for c in categories),
        colors=tuple(tuple(c.get("color", (0, 0, 0))) for c in categories),
    )


def _masks(id_map: torch.Tensor, segments: list[dict[str, Any]]) -> torch.Tensor:
    """(N, H, W) bool masks of ``segments`` in ``id_map`` (H, W)."""
    if not segments:
        return torch.zeros((0, *id_map.shape), dtype=torch.bool)
    return torch.stack([id_map == s["id"] for s in segments])


def load_in_memory(gt_json: Path, pred_json: Path) -> tuple[list[Targets], list[PanopticResult], Vocabulary]:
    """The files of a case as Targets and PanopticResults (in the ground truth's image order)."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    vocabulary = vocabulary_of(gt["categories"])
    index = {cid: k for k, cid in enumerate(vocabulary.category_ids)}
    preds = {a["image_id"]: a for a in pred["annotations"]}
    targets, results = [], []
    for ann in gt["annotations"]:
        gt_map = torch.from_numpy(read_panoptic_png(gt_json.with_suffix("") / ann["file_name"]))
        plain = [s for s in ann["segments_info"] if not s["iscrowd"]]
        crowd = [s for s in ann["segments_info"] if s["iscrowd"]]
        targets.append(
            Targets(
                labels=torch.tensor([index[s["category_id"]] for s in plain], dtype=torch.int64),
                masks=_masks(gt_map, plain),
                is_thing=torch.tensor([vocabulary.is_thing[index[s["category_id"]]] for s in plain]),
                crowd_labels=torch.tensor([index[s["category_id"]] for s in crowd], dtype=torch.int64),
                crowd_masks=_masks(gt_map, crowd),
                void=gt_map == 0,
                segment_ids=torch.tensor([s["id"] for s in plain], dtype=torch.int64),
            )
        )
        p = preds[ann["image_id"]]
        pred_map = read_panoptic_png(pred_json.with_suffix("") / p["file_name"])
        segments = [
            PanopticSegment(
                id=s["id"],
                label=index[s["category_id"]],
                is_thing=vocabulary.is_thing[index[s["category_id"]]],
                score=1.0,
                area=int((pred_map == s["id"]).sum()),
            )
            for s in p["segments_info"]
        ]
        results.append(PanopticResult(id_map=torch.from_numpy(pred_map).to(torch.int32), segments=segments))
    return targets, results, vocabulary
