"""The open-vocabulary world: deterministic; novel words out of segmentation, in captions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from omtseg.data.coco_panoptic import CocoPanopticDataset
from omtseg.data.world import (
    NOVEL_WORDS,
    UNSEEN_COMPOSITIONS,
    make_world_split,
    world_classes,
    world_words,
)
from omtseg.evaluation.panoptic import PanopticQuality
from omtseg.evaluation.pq import paint_targets
from omtseg.io import read_panoptic_ids
from omtseg.types import PanopticResult, PanopticSegment


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_classes_and_groups() -> None:
    classes = world_classes()
    assert len(classes) == 28 and len({c.id for c in classes}) == 28
    groups = {c.name: c.group for c in classes}
    assert all(groups[n] == "unseen" for n in UNSEEN_COMPOSITIONS)
    for c in classes:
        has_novel = any(w in NOVEL_WORDS for w in c.name.split())
        assert (c.group == "novel") == has_novel, c
    # Every word of an unseen composition is seen in some seen class: only the pair is new.
    seen_words = {w for c in classes if c.group == "seen" for w in c.name.split()}
    assert all(set(n.split()) <= seen_words for n in UNSEEN_COMPOSITIONS)
    assert not seen_words & set(NOVEL_WORDS)


def test_deterministic_and_reused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        make_world_split(root, "train", 6, seed=3)
        make_world_split(root, "pretrain", 6, seed=3)
    assert _digest(a) == _digest(b)
    before = {f: f.stat().st_mtime_ns for f in a.rglob("*") if f.is_file()}
    make_world_split(a, "train", 6, seed=3)
    assert {f: f.stat().st_mtime_ns for f in a.rglob("*") if f.is_file()} == before
    make_world_split(b, "train", 6, seed=4)
    assert _digest(a) != _digest(b)


def test_segmentation_splits_keep_novel_words_out(tmp_path: Path) -> None:
    groups = {c.id: c.group for c in world_classes()}
    for split in ("train", "val", "test"):
        paths = make_world_split(tmp_path, split, 40)
        data = json.loads(Path(paths.panoptic_json).read_text())
        # The training vocabulary names no novel or unseen class, and no image shows one, labelled or not.
        assert {c["split"] for c in data["categories"]} == {"seen"}
        assert not any(w in c["name"].split() for c in data["categories"] for w in NOVEL_WORDS)
        for ann in data["annotations"]:
            assert {groups[s["category_id"]] for s in ann["segments_info"]} == {"seen"}
            ids = read_panoptic_ids(Path(paths.panoptic_dir) / ann["file_name"])
            assert (ids > 0).all()  # no void region that could hide an unlabelled novel thing
        dataset = CocoPanopticDataset(
            image_dir=paths.image_dir,
            panoptic_dir=paths.panoptic_dir,
            panoptic_json=paths.panoptic_json,
            categories_json=paths.categories_json,
        )
        assert len(dataset) == 40 and len(dataset.vocabulary) == 15


@pytest.mark.parametrize("split,group", [("unseen", "unseen"), ("novel", "novel")])
def test_zero_shot_splits(tmp_path: Path, split: str, group: str) -> None:
    paths = make_world_split(tmp_path, split, 30)
    data = json.loads(Path(paths.panoptic_json).read_text())
    assert len(data["categories"]) == 28  # the whole world's vocabulary, as ADE20K's list holds COCO's
    groups = {c["id"]: c["split"] for c in data["categories"]}
    other = ({"unseen", "novel"} - {group}).pop()
    novel_ids = set()
    for ann in data["annotations"]:
        present = {groups[s["category_id"]] for s in ann["segments_info"]}
        assert group in present and other not in present
        novel_ids |= {s["category_id"] for s in ann["segments_info"] if groups[s["category_id"]] == group}
    # Every class of the group is shown somewhere in 30 images (the required class cycles through them).
    assert novel_ids == {c["id"] for c in data["categories"] if c["split"] == group}


def test_captions_cover_every_word(tmp_path: Path) -> None:
    path = make_world_split(tmp_path, "pretrain", 120)
    data = json.loads(Path(path).read_text())
    assert len(data["annotations"]) == 2 * 120
    words = {w.strip(".,") for a in data["annotations"] for w in a["caption"].split()}
    assert set(world_words()) <= words
    assert set(NOVEL_WORDS) <= words


def test_groups_reach_the_metrics(tmp_path: Path) -> None:
    paths = make_world_split(tmp_path, "novel", 12)
    dataset = CocoPanopticDataset(
        image_dir=paths.image_dir,
        panoptic_dir=paths.panoptic_dir,
        panoptic_json=paths.panoptic_json,
        categories_json=paths.categories_json,
    )
    vocabulary = dataset.vocabulary
    assert vocabulary.groups is not None and set(vocabulary.groups) == {"seen", "unseen", "novel"}
    assert vocabulary.subset([0, 5]).groups == (vocabulary.groups[0], vocabulary.groups[5])
    # Ground truth as the prediction: each group present scores 100; unseen (absent) is not reported.
    metric = PanopticQuality(vocabulary=vocabulary)
    targets = [dataset[i].targets for i in range(len(dataset))]
    preds = []
    for t in targets:
        id_map, ids, labels, _ = paint_targets(t)
        segments = [
            PanopticSegment(id=int(i), label=int(c), is_thing=vocabulary.is_thing[c], score=1.0, area=1)
            for i, c in zip(ids, labels, strict=True)
        ]
        preds.append(PanopticResult(id_map=id_map, segments=segments))
    metric.update(preds, targets)
    groups = metric.compute()["groups"]
    assert groups["novel"]["pq"] == pytest.approx(1.0) and groups["seen"]["pq"] == pytest.approx(1.0)
    assert groups["unseen"]["n"] == 0


def test_test_split_prompted_with_another_category_list(tmp_path: Path) -> None:
    """Reordered names, and extra names absent from the images: the same segments, the same class names."""
    from omtseg.data.datamodule import PanopticDataModule, WorldData

    world = WorldData(num_train=0, num_val=0, num_test=3, test_split="novel")

    def segments(categories_json: Path | None) -> tuple[list[str], list[list[tuple[int, str]]]]:
        data = PanopticDataModule(
            root=str(tmp_path), world=world, eval_size=None,
            test_categories_json=None if categories_json is None else str(categories_json),
        )  # fmt: skip
        data.prepare_data()
        data.setup("test")
        dataset = data.datasets["test"]
        names = list(dataset.vocabulary.names)
        return names, [
            [(int(s), names[int(c)]) for s, c in zip(t.segment_ids, t.labels, strict=True)]
            for t in (dataset[i].targets for i in range(len(dataset)))
        ]

    names, expected = segments(None)
    categories = json.loads((tmp_path / "categories_novel.json").read_text())
    reversed_json, extended_json = tmp_path / "reversed.json", tmp_path / "extended.json"
    reversed_json.write_text(json.dumps(categories[::-1]))
    extra = {"id": 250, "name": "purple star", "isthing": 1, "color": [1, 2, 3], "split": "distractor"}
    extended_json.write_text(json.dumps([*categories, extra]))
    reversed_names, got = segments(reversed_json)
    assert reversed_names == names[::-1] and got == expected
    extended_names, got = segments(extended_json)
    assert extended_names == [*names, "purple star"] and got == expected
    missing = tmp_path / "missing.json"
    present = json.loads((tmp_path / "panoptic_novel.json").read_text())["annotations"][0]["segments_info"]
    missing.write_text(json.dumps([c for c in categories if c["id"] != present[0]["category_id"]]))
    with pytest.raises(ValueError, match="unknown category id"):
        segments(missing)
