"""pq_compute on COCO panoptic files: parity with hotcoco's panopticapi port, defaults, sanity errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _panoptic_cases import CATEGORIES, random_case, sample_case, sample_root, write_dataset
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute

from omtseg.evaluation.panoptic import pq_compute

SAMPLE = sample_root()
needs_sample = pytest.mark.skipif(SAMPLE is None, reason="COCO panoptic sample not found")


def _max_abs_difference(ours: dict, reference: dict) -> float:
    """Largest difference over All/Things/Stuff and the classes the reference scores (absent ones are -1)."""
    diff = 0.0
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == reference[group]["n"], group
        if reference[group]["n"]:
            diff = max(diff, *(abs(ours[group][m] - reference[group][m]) for m in ("pq", "sq", "rq")))
    assert set(ours["per_class"]) == set(reference["per_class"])
    for cat_id, ref in reference["per_class"].items():
        if ref["tp"] + ref["fp"] + ref["fn"] == 0:
            assert ours["per_class"][cat_id] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        else:
            diff = max(diff, *(abs(ours["per_class"][cat_id][m] - ref[m]) for m in ("pq", "sq", "rq")))
    return diff


@needs_sample
def test_sample_against_itself_is_perfect() -> None:
    result = pq_compute(SAMPLE / "panoptic.json", SAMPLE / "panoptic.json", workers=1)
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8}
    assert (result["Things"]["n"], result["Stuff"]["n"]) == (4, 4)
    assert len(result["per_class"]) == 133 and result["per_class"][1] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}


@needs_sample
@pytest.mark.parametrize("seed", range(6))
def test_perturbed_sample_matches_hotcoco(tmp_path: Path, seed: int) -> None:
    pred_json, _ = sample_case(tmp_path, SAMPLE, seed)
    gt_json = SAMPLE / "panoptic.json"
    ours = pq_compute(gt_json, pred_json, gt_folder=SAMPLE / "panoptic", workers=1)
    reference = hotcoco_pq_compute(str(gt_json), str(pred_json), gt_folder=str(SAMPLE / "panoptic"))
    assert _max_abs_difference(ours, reference) < 1e-9
    assert ours["All"]["pq"] < 1.0


def test_random_perturbations_match_hotcoco(tmp_path: Path) -> None:
    worst = 0.0
    for seed in range(40):
        root = tmp_path / str(seed)
        gt_json, pred_json = random_case(root, seed)
        ours = pq_compute(gt_json, pred_json, workers=1)
        worst = max(worst, _max_abs_difference(ours, hotcoco_pq_compute(str(gt_json), str(pred_json))))
    assert worst < 1e-9


def test_process_pool_gives_the_same_numbers(tmp_path: Path) -> None:
    gt_json, pred_json = random_case(tmp_path, seed=7, num_images=9)
    pooled, inline = pq_compute(gt_json, pred_json, workers=2), pq_compute(gt_json, pred_json, workers=1)
    assert pooled["per_class"].keys() == inline["per_class"].keys()
    for group in ("All", "Things", "Stuff"):
        assert pooled[group] == pytest.approx(inline[group], abs=1e-12)
    for cat_id, values in inline["per_class"].items():
        assert pooled["per_class"][cat_id] == pytest.approx(values, abs=1e-12)


def test_hand_built_case(tmp_path: Path) -> None:
    # 4x6 image. GT: person A (left 2 columns), person B (columns 2-3), road (columns 4-5, row 0 void).
    gt = np.array([[1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3]])
    gt_segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "area": 8},
        {"id": 2, "category_id": 1, "iscrowd": 0, "area": 8},
        {"id": 3, "category_id": 120, "iscrowd": 0, "area": 6},
    ]
    # Pred: person A exact; person B only 4 of 8 pixels (IoU 0.5, not > 0.5); road covering void too.
    pred = np.array([[5, 5, 6, 0, 7, 7], [5, 5, 6, 0, 7, 7], [5, 5, 6, 0, 7, 7], [5, 5, 6, 0, 7, 7]])
    pred_segments = [
        {"id": 5, "category_id": 1, "iscrowd": 0},
        {"id": 6, "category_id": 1, "iscrowd": 0},
        {"id": 7, "category_id": 120, "iscrowd": 0},
    ]
    gt_json = write_dataset(tmp_path, "gt", [(1, gt, gt_segments)], CATEGORIES)
    pred_json = write_dataset(tmp_path, "pred", [(1, pred, pred_segments)], CATEGORIES)
    result = pq_compute(gt_json, pred_json, workers=1)
    # person: tp 1 (IoU 1), fp 1, fn 1 -> PQ 1/2, SQ 1, RQ 1/2. Road: void pixels leave the union -> IoU 1.
    assert result["per_class"][1] == {"pq": 0.5, "sq": 1.0, "rq": 0.5}
    assert result["per_class"][120] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert result["All"] == {"pq": 0.75, "sq": 1.0, "rq": 0.75, "n": 2}
    assert result["Things"]["n"] == 1 and result["Stuff"]["n"] == 1


def _broken_case(tmp_path: Path, change) -> tuple[Path, Path]:
    gt_json, pred_json = random_case(tmp_path, seed=3, num_images=2)
    data = json.loads(pred_json.read_text())
    change(data)
    pred_json.write_text(json.dumps(data))
    return gt_json, pred_json


def _first_segments(data: dict) -> list:
    return next(a["segments_info"] for a in data["annotations"] if a["segments_info"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _first_segments(d).pop(), "not in segments_info"),
        (lambda d: _first_segments(d).append({"id": 77, "category_id": 1, "iscrowd": 0}), "not in the PNG"),
        (lambda d: _first_segments(d)[0].update(category_id=999), "unknown category_id"),
        (lambda d: d["annotations"].pop(), "no prediction for 1 ground-truth images"),
        (lambda d: d.pop("annotations"), "no `annotations` list"),
    ],
)
def test_malformed_predictions_raise(tmp_path: Path, change, message: str) -> None:
    gt_json, pred_json = _broken_case(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        pq_compute(gt_json, pred_json, workers=1)


def test_missing_files_raise(tmp_path: Path) -> None:
    gt_json, pred_json = random_case(tmp_path, seed=5, num_images=2)
    with pytest.raises(FileNotFoundError, match="Folder .*nowhere"):
        pq_compute(gt_json, pred_json, pred_folder=tmp_path / "nowhere", workers=1)
    with pytest.raises(FileNotFoundError, match="not found"):
        pq_compute(gt_json, tmp_path / "absent.json", workers=1)
    next((tmp_path / "pred").iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        pq_compute(gt_json, pred_json, workers=1)


def test_size_mismatch_raises(tmp_path: Path) -> None:
    gt_json = write_dataset(tmp_path, "gt", [(1, np.zeros((3, 5), np.int64), [])], CATEGORIES)
    pred_json = write_dataset(tmp_path, "pred", [(1, np.zeros((3, 4), np.int64), [])], CATEGORIES)
    with pytest.raises(ValueError, match="predict at the ground truth's size"):
        pq_compute(gt_json, pred_json, workers=1)


def test_empty_dataset_and_empty_images(tmp_path: Path) -> None:
    empty = np.zeros((5, 7), np.int64)
    gt_json = write_dataset(tmp_path, "gt", [(1, empty, [])], CATEGORIES)
    pred_json = write_dataset(tmp_path, "pred", [(1, empty, [])], CATEGORIES)
    result = pq_compute(gt_json, pred_json, workers=1)
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    no_images = write_dataset(tmp_path, "none", [], CATEGORIES)
    assert pq_compute(no_images, pred_json, gt_folder=tmp_path / "gt")["All"]["n"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda segments: segments.pop(), "are in the PNG/id map but not in segments_info"),
        (
            lambda segments: segments.append({"id": 77, "category_id": 1, "iscrowd": 0}),
            "not in the PNG/id map",
        ),
        (lambda segments: segments.append(dict(segments[0])), "segment ids repeat"),
    ],
)
def test_errors_name_the_offending_image_of_a_batch(tmp_path: Path, change, message: str) -> None:
    # Images are matched together (one vectorised pass per worker); the error still names its image.
    gt_json, pred_json = random_case(tmp_path, seed=7, num_images=5)
    data = json.loads(pred_json.read_text())
    annotation = [a for a in data["annotations"] if a["segments_info"]][-2]
    change(annotation["segments_info"])
    pred_json.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"^Image {annotation['image_id']!r}: .*{message}"):
        pq_compute(gt_json, pred_json, workers=1)


def test_worker_threads_give_the_same_result(tmp_path: Path) -> None:
    gt_json, pred_json = random_case(tmp_path, seed=11, num_images=9)
    one = pq_compute(gt_json, pred_json, workers=1)
    two = pq_compute(gt_json, pred_json, workers=2)
    for key in ("All", "Things", "Stuff"):
        assert two[key] == pytest.approx(one[key], abs=1e-12)
    assert two["per_class"].keys() == one["per_class"].keys()
    for key, values in one["per_class"].items():
        assert two["per_class"][key] == pytest.approx(values, abs=1e-12)
    assert _max_abs_difference(one, hotcoco_pq_compute(str(gt_json), str(pred_json))) < 1e-9
