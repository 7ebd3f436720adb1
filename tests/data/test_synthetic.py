from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omtseg.data.coco_panoptic import CocoPanopticDataset
from omtseg.data.synthetic import make_synthetic_panoptic, synthetic_vocabulary
from omtseg.io import read_panoptic_png


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    a = make_synthetic_panoptic(tmp_path / "a", num_images=4, image_size=48, seed=5)
    make_synthetic_panoptic(tmp_path / "b", num_images=4, image_size=48, seed=5)
    make_synthetic_panoptic(tmp_path / "c", num_images=4, image_size=48, seed=6)
    files = _files(tmp_path / "a")
    assert len(files) == 2 * 4 + 2
    assert files == _files(tmp_path / "b")
    other = _files(tmp_path / "c")
    assert other.keys() == files.keys()
    assert other["images/train/000000.png"] != files["images/train/000000.png"]
    assert Path(a.panoptic_json) == tmp_path / "a" / "panoptic_train.json"


def test_splits_differ_and_share_categories(tmp_path: Path) -> None:
    train = make_synthetic_panoptic(tmp_path, num_images=2, image_size=40, seed=0, split="train")
    val = make_synthetic_panoptic(tmp_path, num_images=2, image_size=40, seed=0, split="val")
    assert train.categories_json == val.categories_json
    assert Path(train.image_dir, "000000.png").read_bytes() != Path(val.image_dir, "000000.png").read_bytes()


def test_second_call_writes_nothing_and_new_arguments_rewrite(tmp_path: Path) -> None:
    make_synthetic_panoptic(tmp_path, num_images=3, image_size=40, seed=1)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    make_synthetic_panoptic(tmp_path, num_images=3, image_size=40, seed=1)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    assert not list(tmp_path.rglob(".*tmp*")), "no temporary files left behind"
    Path(tmp_path / "images" / "train" / "000002.png").unlink()  # an interrupted or damaged run is redone
    make_synthetic_panoptic(tmp_path, num_images=3, image_size=40, seed=1)
    assert (tmp_path / "images" / "train" / "000002.png").is_file()
    make_synthetic_panoptic(tmp_path, num_images=3, image_size=40, seed=2)
    info = json.loads((tmp_path / "panoptic_train.json").read_text())["info"]
    assert info["seed"] == 2


def test_content_is_a_plausible_panoptic_scene(synthetic_root: Path) -> None:
    data = json.loads((synthetic_root / "panoptic_train.json").read_text())
    vocab = synthetic_vocabulary()
    thing_ids = {cid for cid, t in zip(vocab.category_ids, vocab.is_thing, strict=True) if t}
    n_things, n_void, n_crowd = [], 0, 0
    for ann in data["annotations"]:
        segs = ann["segments_info"]
        ids = read_panoptic_png(synthetic_root / "panoptic" / "train" / ann["file_name"])
        areas = {s["id"]: s["area"] for s in segs}
        for seg_id, area in areas.items():
            assert (ids == seg_id).sum() == area
        things = [s for s in segs if s["category_id"] in thing_ids and not s["iscrowd"]]
        n_things.append(len(things))
        assert all(s["area"] >= 20 for s in things), "instances stay visible under occlusion"
        assert any(s["category_id"] not in thing_ids for s in segs), "every image has stuff"
        n_void += int((ids == 0).any())
        n_crowd += sum(s["iscrowd"] for s in segs)
    assert min(n_things) >= 1 and max(n_things) <= 5 and max(n_things) >= 3
    assert n_void > 0 and n_crowd > 0


def test_round_trip_through_the_coco_loader(synthetic_train) -> None:
    ds = CocoPanopticDataset(
        image_dir=synthetic_train.image_dir,
        panoptic_dir=synthetic_train.panoptic_dir,
        panoptic_json=synthetic_train.panoptic_json,
        categories_json=synthetic_train.categories_json,
    )
    assert ds.vocabulary == synthetic_vocabulary()
    assert ds.vocabulary.names[:5] == ("ball", "box", "traffic cone", "starfish", "donut")
    s = ds[0]
    assert s.image.shape == (3, 64, 64)
    # Stuff classes differ in mean color: the data is learnable from local appearance.
    means = {}
    for k in range(len(ds)):
        t = ds[k].targets
        img = ds[k].image.float()
        for label, mask in zip(t.labels.tolist(), t.masks, strict=True):
            if not ds.vocabulary.is_thing[label]:
                means.setdefault(label, []).append(img[:, mask].mean(1))
    centers = np.stack([np.mean(np.stack(v), 0) for v in means.values()])
    gaps = np.linalg.norm(centers[:, None] - centers[None], axis=-1) + 1e6 * np.eye(len(centers))
    assert gaps.min() > 30


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_panoptic(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_panoptic(tmp_path, num_images=1, image_size=16)
    with pytest.raises(ValueError, match="split"):
        make_synthetic_panoptic(tmp_path, num_images=1, split="../x")
