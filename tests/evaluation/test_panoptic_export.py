"""COCO panoptic export of predictions and ground truth: file contents, round trip through pq_compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _panoptic_cases import load_in_memory, random_case
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute

from omtseg.evaluation.export import export_panoptic_ground_truth, export_panoptic_predictions
from omtseg.evaluation.panoptic import pq_compute
from omtseg.io import read_panoptic_png
from omtseg.types import ImageInfo, PanopticResult, PanopticSegment, Targets, Vocabulary

VOCABULARY = Vocabulary(
    names=("cat", "sky"),
    synonyms=(("cat",), ("sky",)),
    is_thing=(True, False),
    category_ids=(17, 90),
    colors=((1, 2, 3), (4, 5, 6)),
)


def _info(image_id: int, file_name: str = "") -> ImageInfo:
    return ImageInfo(
        image_id=image_id, file_name=file_name or f"img_{image_id}.jpg", orig_size=(5, 7), resized_size=(5, 7)
    )


def _targets() -> Targets:
    masks = torch.zeros(2, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 1:4] = True  # cat: rows 1-2, columns 1-3
    masks[1, 3:] = True  # sky: rows 3-4
    crowd = torch.zeros(1, 5, 7, dtype=torch.bool)
    crowd[0, 0, 5:] = True
    void = torch.zeros(5, 7, dtype=torch.bool)
    void[4, 0] = True
    return Targets(
        labels=torch.tensor([0, 1]),
        masks=masks,
        is_thing=torch.tensor([True, False]),
        crowd_labels=torch.tensor([0]),
        crowd_masks=crowd,
        void=void,
        segment_ids=torch.tensor([300, 70000]),
    )


def test_ground_truth_files(tmp_path: Path) -> None:
    path = export_panoptic_ground_truth(
        [(_info(4), _targets())], vocabulary=VOCABULARY, json_path=tmp_path / "gt.json"
    )
    data = json.loads(path.read_text())
    assert data["images"] == [{"id": 4, "file_name": "img_4.jpg", "height": 5, "width": 7}]
    assert data["categories"][1] == {
        "id": 90,
        "name": "sky",
        "isthing": 0,
        "color": [4, 5, 6],
        "supercategory": "",
    }
    ann = data["annotations"][0]
    assert ann["file_name"] == "img_4.png" and ann["image_id"] == 4
    assert ann["segments_info"] == [
        {"id": 300, "category_id": 17, "iscrowd": 0, "area": 6, "bbox": [1, 1, 3, 2]},
        {"id": 70000, "category_id": 90, "iscrowd": 0, "area": 13, "bbox": [0, 3, 7, 2]},
        {"id": 70001, "category_id": 17, "iscrowd": 1, "area": 2, "bbox": [5, 0, 2, 1]},
    ]
    id_map = read_panoptic_png(tmp_path / "gt" / "img_4.png")
    assert id_map[4, 0] == 0 and id_map[1, 1] == 300 and id_map[3, 6] == 70000 and id_map[0, 6] == 70001
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gt", "gt.json", "img_4.png"]  # no temp files left


def test_predictions_round_trip_through_pq_compute(tmp_path: Path) -> None:
    gt_json, pred_json = random_case(tmp_path / "case", seed=4, num_images=4)
    targets, results, vocabulary = load_in_memory(gt_json, pred_json)
    ids = [ann["image_id"] for ann in json.loads(gt_json.read_text())["annotations"]]
    infos = [_info(i, f"sub/{i}.jpg") for i in ids]
    new_gt = export_panoptic_ground_truth(
        zip(infos, targets, strict=True), vocabulary=vocabulary, json_path=tmp_path / "out" / "gt.json"
    )
    new_pred = export_panoptic_predictions(
        zip(infos, results, strict=True),
        vocabulary=vocabulary,
        json_path=tmp_path / "out" / "pred.json",
        folder=tmp_path / "pngs",
    )
    assert (tmp_path / "pngs" / "sub" / f"{ids[0]}.png").is_file()
    expected = pq_compute(gt_json, pred_json, workers=1)
    assert pq_compute(new_gt, new_pred, pred_folder=tmp_path / "pngs", workers=1) == expected
    reference = hotcoco_pq_compute(str(new_gt), str(new_pred), pred_folder=str(tmp_path / "pngs"))
    assert reference["All"]["pq"] == pytest.approx(expected["All"]["pq"], abs=1e-12)


def test_prediction_errors(tmp_path: Path) -> None:
    id_map = torch.zeros(5, 7, dtype=torch.int32)
    id_map[:2] = 3
    good = PanopticResult(id_map=id_map, segments=[PanopticSegment(3, 1, False, 0.9, 14)])
    listed_twice = PanopticResult(id_map=id_map, segments=good.segments * 2)
    undrawn = PanopticResult(id_map=id_map, segments=[*good.segments, PanopticSegment(4, 0, True, 0.5, 0)])
    bad_label = PanopticResult(id_map=id_map, segments=[PanopticSegment(3, 5, False, 0.9, 14)])
    for result, message in ((listed_twice, "once"), (undrawn, "do not match"), (bad_label, "outside")):
        with pytest.raises(ValueError, match=message):
            export_panoptic_predictions(
                [(_info(1), result)], vocabulary=VOCABULARY, json_path=tmp_path / "p.json"
            )
    with pytest.raises(ValueError, match="exported twice"):
        export_panoptic_predictions(
            [(_info(1), good), (_info(1), good)], vocabulary=VOCABULARY, json_path=tmp_path / "p.json"
        )
    assert not (tmp_path / "p.json").exists()
    empty = PanopticResult(id_map=torch.zeros(3, 4, dtype=torch.int32), segments=[])
    path = export_panoptic_predictions(
        [(_info(2), empty)], vocabulary=VOCABULARY, json_path=tmp_path / "e.json"
    )
    assert json.loads(path.read_text())["annotations"][0]["segments_info"] == []


def test_ground_truth_needs_positive_unique_ids(tmp_path: Path) -> None:
    targets = _targets()
    targets.segment_ids = torch.tensor([5, 5])
    with pytest.raises(ValueError, match="positive and unique"):
        export_panoptic_ground_truth(
            [(_info(1), targets)], vocabulary=VOCABULARY, json_path=tmp_path / "g.json"
        )
