"""``omtseg prepare``: tiny fake official downloads -> prepared layouts, read back by the datasets."""

from __future__ import annotations

import pickle
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from omtseg.cli import run_command
from omtseg.commands.prepare import main
from omtseg.data.prepare import ade20k_847, prepare
from omtseg.data.prepare.ade20k_150 import panoptic_from_annotations, prepare_ade20k_150
from omtseg.data.prepare.resize import resize_linear
from omtseg.data.zeroshot import ADE20KPanopticDataset, read_label_map, zero_shot_dataset
from omtseg.evaluation.panoptic import pq_compute
from omtseg.io import load_json, read_panoptic_png, save_json
from omtseg.types import IGNORE_INDEX


def _jpg(path: Path, h: int, w: int, seed: int = 0, quality: int = 75) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=quality)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---- ADE20K-150 --------------------------------------------------------------------------------------------


def _fake_ade150(src: Path) -> Path:
    """A 2-image ADEChallengeData2016 (validation) + 1 training image, with instance annotations."""
    raw = src / "ADEChallengeData2016"
    for split, stem in (
        ("validation", "ADE_val_00000001"),
        ("validation", "ADE_val_00000002"),
        ("training", "ADE_train_00000001"),
    ):
        h, w = 17, 26
        _jpg(raw / "images" / split / f"{stem}.jpg", h, w)
        sem = np.zeros((h, w), dtype=np.uint8)  # 0 = other -> ignore
        sem[:, :8] = 1  # wall (stuff)
        sem[:4, 8:] = 3  # sky (stuff)
        sem[5:12, 10:20] = 8  # bed (thing, label 7): 2 instances below, one row without instance
        inst = np.zeros((h, w, 3), dtype=np.uint8)
        inst[5:11, 10:15] = (1, 1, 0)  # instance class 1 (bed), instance 1
        inst[5:11, 15:20] = (1, 2, 0)  # bed, instance 2
        inst[0:2, 0:3] = (4, 3, 0)  # a person (instance class 4 -> label 12) over the wall
        _png(raw / "annotations" / split / f"{stem}.png", sem)
        _png(raw / "annotations_instance" / split / f"{stem}.png", inst)
    return raw


def test_prepare_ade20k_150_end_to_end(tmp_path: Path) -> None:
    _fake_ade150(tmp_path / "raw")
    dst = tmp_path / "data"
    stats = prepare("ade20k_150", tmp_path / "raw", dst, show_progress=False)
    base = dst / "ADEChallengeData2016"
    assert stats.written == {"images": 3, "semantic": 3, "panoptic": 3, "json": 4}

    semantic = read_label_map(base / "annotations_detectron2/validation/ADE_val_00000001.png")
    assert semantic[0, 0] == 0 and semantic[0, 20] == 2 and semantic[11, 12] == 7 and semantic[14, 25] == 255

    pan = load_json(base / "ade20k_panoptic_val.json")
    assert len(pan["categories"]) == 150 and [a["image_id"] for a in pan["annotations"]] == [
        "ADE_val_00000001",
        "ADE_val_00000002",
    ]
    segments = pan["annotations"][0]["segments_info"]
    assert [s["category_id"] for s in segments] == [0, 2, 7, 7, 12]
    ids = read_panoptic_png(base / "ade20k_panoptic_val/ADE_val_00000001.png")
    # As the reference measures them: the wall on the semantic map, before the person is pasted over it.
    assert [s["area"] for s in segments] == [17 * 8, 4 * 18, 30, 30, 6]
    assert segments[0]["bbox"] == [0, 0, 8, 17] and int((ids == segments[0]["id"]).sum()) == 17 * 8 - 6
    for s in segments[1:]:
        mask = ids == s["id"]
        assert s["area"] == int(mask.sum())
        rows, cols = np.nonzero(mask)
        assert s["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]

    dataset = ADE20KPanopticDataset(root=dst, split="val")
    sample = dataset[0]
    assert sample.targets.labels.tolist() == [0, 2, 7, 7, 12]
    assert sample.targets.is_thing.tolist() == [False, False, True, True, True]
    assert sample.semantic[11, 12] == 7 and sample.targets.void[11, 12]  # class pixels without instance
    assert sample.semantic[0, 0] == 0  # the person instance covers the wall in the panoptic map only
    assert sample.targets.labels[sample.targets.masks[:, 0, 0]].tolist() == [12]
    semantic_only = zero_shot_dataset("ade20k_150", root=dst)
    assert torch.equal(semantic_only[1].semantic, sample.semantic)

    coco = COCO(str(base / "ade20k_instance_val.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=["ADE_val_00000001"]))
    assert [a["category_id"] for a in anns] == [7, 7, 12] and len(coco.getCatIds()) == 100
    expected = np.zeros((17, 26), dtype=bool)
    expected[5:11, 10:15] = True
    assert np.array_equal(coco.annToMask(anns[0]).astype(bool), expected)
    assert len({a["id"] for a in coco.dataset["annotations"]}) == 6

    # The panoptic ground truth is valid COCO panoptic (category id 0 included): scored against itself, only
    # the wall's JSON area (before the person) differs from its pixels: IoU 130 / 136, still a match.
    gt_json = base / "ade20k_panoptic_val.json"
    result = pq_compute(gt_json, gt_json, workers=1)
    assert result["All"]["n"] == 4 and result["Things"]["n"] == 2 and result["All"]["rq"] == 1.0
    assert result["per_class"][0]["pq"] == pytest.approx(130 / 136)


def test_prepare_ade20k_150_resumes_and_works_in_place(tmp_path: Path) -> None:
    _fake_ade150(tmp_path / "raw")
    first = prepare("ade20k_150", tmp_path / "raw", tmp_path / "raw", splits=["val"], show_progress=False)
    assert "images" not in first.written  # in place: images are not copied onto themselves
    again = prepare("ade20k_150", tmp_path / "raw", tmp_path / "raw", splits=["val"], show_progress=False)
    assert again.total_written == 0 and again.skipped["semantic"] == 2
    (tmp_path / "raw/ADEChallengeData2016/ade20k_panoptic_val.json").unlink()
    rebuilt = prepare("ade20k_150", tmp_path / "raw", tmp_path / "raw", splits=["val"], show_progress=False)
    assert rebuilt.written == {"json": 2} and rebuilt.skipped["panoptic"] == 2


def test_prepare_ade20k_150_errors(tmp_path: Path) -> None:
    raw = _fake_ade150(tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
        prepare("ade20k_150", tmp_path / "empty", tmp_path / "data")
    for p in sorted((raw / "annotations_instance").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (raw / "annotations_instance").rmdir()
    with pytest.raises(FileNotFoundError, match="annotations_instance"):
        prepare("ade20k_150", tmp_path / "raw", tmp_path / "data", show_progress=False)


def _fake_ade150_covered(src: Path) -> None:
    """One 10x10 validation image: a person covers the whole sky and 30 of the wall's 50 pixels."""
    raw = src / "ADEChallengeData2016"
    stem = "ADE_val_00000001"
    _jpg(raw / "images/validation" / f"{stem}.jpg", 10, 10)
    sem = np.zeros((10, 10), dtype=np.uint8)
    sem[:, :5] = 1  # wall (label 0), 50 px
    sem[:4, 5:] = 3  # sky (label 2), 20 px
    sem[4:, 5:] = 4  # floor (label 3), 30 px
    inst = np.zeros((10, 10, 3), dtype=np.uint8)
    inst[:4, 5:] = (4, 1, 0)  # person (label 12) 1 exactly over the sky
    inst[:6, :5] = (4, 2, 0)  # person 2 over the top 30 wall pixels
    _png(raw / "annotations/validation" / f"{stem}.png", sem)
    _png(raw / "annotations_instance/validation" / f"{stem}.png", inst)


def test_ade20k_150_panoptic_json_is_the_reference_and_cleaned_is_an_option(tmp_path: Path) -> None:
    # prepare_ade20k_pan_seg.py measures a stuff segment before instances are pasted over it and lists it
    # even when instances cover it completely; panopticapi reads ground-truth areas from that JSON.
    _fake_ade150_covered(tmp_path / "raw")
    prepare("ade20k_150", tmp_path / "raw", tmp_path / "ref", splits=["val"], show_progress=False)
    ref_json = tmp_path / "ref/ADEChallengeData2016/ade20k_panoptic_val.json"
    clean_json = tmp_path / "clean/ADEChallengeData2016/ade20k_panoptic_val.json"
    ref = load_json(ref_json)["annotations"][0]["segments_info"]
    assert [(s["category_id"], s["area"]) for s in ref] == [(0, 50), (2, 20), (3, 30), (12, 20), (12, 30)]
    assert ref[1]["bbox"] == [5, 0, 5, 4]  # the covered sky keeps its box
    ids = read_panoptic_png(tmp_path / "ref/ADEChallengeData2016/ade20k_panoptic_val/ADE_val_00000001.png")
    assert not (ids == ref[1]["id"]).any() and int((ids == ref[0]["id"]).sum()) == 20
    prepare_ade20k_150(
        tmp_path / "raw", tmp_path / "clean", splits=("val",), show_progress=False, cleaned_panoptic=True
    )
    clean = load_json(clean_json)["annotations"][0]["segments_info"]
    assert [(s["category_id"], s["area"]) for s in clean] == [(0, 20), (3, 30), (12, 20), (12, 30)]
    assert clean[0]["bbox"] == [0, 6, 5, 4]
    same_png = tmp_path / "clean/ADEChallengeData2016/ade20k_panoptic_val/ADE_val_00000001.png"
    assert np.array_equal(read_panoptic_png(same_png), ids)

    # The PQ difference, for a prediction equal to the visible map (the cleaned files) with panopticapi's
    # rules: against the reference JSON the wall's IoU is 20 / 50 (a false negative and a false positive)
    # and the covered sky is a false negative, so PQ = (wall 0 + sky 0 + floor 1 + person 1) / 4.
    on_reference = pq_compute(ref_json, clean_json, pred_folder=same_png.parent, workers=1)
    on_cleaned = pq_compute(clean_json, clean_json, workers=1)
    assert on_cleaned["All"]["pq"] == 1.0 and on_cleaned["All"]["n"] == 3
    assert on_reference["All"]["pq"] == pytest.approx(0.5) and on_reference["All"]["n"] == 4
    assert on_reference["Stuff"]["pq"] == pytest.approx(1 / 3) and on_reference["Things"]["pq"] == 1.0


def test_panoptic_from_annotations_rejects_mixed_instance() -> None:
    semantic = np.zeros((4, 4), dtype=np.uint8)
    instance = np.zeros((4, 4, 3), dtype=np.uint8)
    instance[0, :2] = (1, 1, 0)
    instance[1, :2] = (2, 1, 0)  # instance 1 spans two classes
    with pytest.raises(ValueError, match="exactly one class"):
        panoptic_from_annotations(semantic, instance, (False,) * 150, {1: 7, 2: 8})
    ids, segments, things = panoptic_from_annotations(
        semantic, np.zeros((4, 4, 3), dtype=np.uint8), (False,) * 150, {}
    )
    assert segments[0]["area"] == 16 and things == [] and ids.max() == 1


# ---- ADE20K-847 --------------------------------------------------------------------------------------------


def _seg_png(path: Path, class_ids: np.ndarray) -> None:
    seg = np.zeros(class_ids.shape + (3,), dtype=np.uint8)
    seg[..., 0] = (class_ids // 256) * 10 + 3  # R / 10 floors away the +3 (R also encodes instance bits)
    seg[..., 1] = class_ids % 256
    _png(path, seg)


def _fake_ade847(src: Path) -> None:
    raw = src / "ADE20K_2021_17_01"
    folders, names = [], []
    for split, name, (h, w) in (
        ("validation", "ADE_val_00000001.jpg", (20, 30)),
        ("training", "ADE_train_00000001.jpg", (9, 13)),
    ):
        folder = f"ADE20K_2021_17_01/images/ADE/{split}/home/kitchen"
        _jpg(src / folder / name, h, w, quality=95)  # not PIL's default: a copied file would differ
        class_ids = np.full((h, w), 2978)  # wall -> label 0
        class_ids[: h // 2] = 1831  # person -> label 11
        class_ids[1::3, 2::4] = 2978  # wall speckles: nearest sampling decides which survive a shrink
        class_ids[:, :3] = 5  # an object class outside the 847 -> ignore
        class_ids[-1, -1] = 0  # unlabelled -> ignore
        _seg_png(src / folder / name.replace(".jpg", "_seg.png"), class_ids)
        folders.append(folder)
        names.append(name)
    with (raw / "index_ade20k.pkl").open("wb") as f:
        pickle.dump({"filename": names, "folder": folders, "objectnames": ["-", "wall"]}, f)


def test_prepare_ade20k_847(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ade847(tmp_path / "raw")
    monkeypatch.setattr(ade20k_847, "MAX_SHORT_SIDE", 10)  # the 20x30 image shrinks to 10x15, 9x13 stays
    stats = prepare("ade20k_847", tmp_path / "raw", tmp_path / "data", show_progress=False)
    assert stats.written == {"images": 2, "labels": 2}
    base = tmp_path / "data/ADE20K_2021_17_01"
    tif = base / "annotations_detectron2/validation/ADE_val_00000001.tif"
    assert Image.open(tif).mode == "I;16"
    labels = read_label_map(tif)
    assert labels.shape == (10, 15) and set(np.unique(labels).tolist()) == {0, 11, 65535}
    assert Image.open(base / "images_detectron2/validation/ADE_val_00000001.jpg").size == (15, 10)
    train = read_label_map(base / "annotations_detectron2/training/ADE_train_00000001.tif")
    expected = np.full((9, 13), 0)
    expected[:4] = 11
    expected[1::3, 2::4] = 0
    expected[:, :3] = 65535
    expected[-1, -1] = 65535
    assert np.array_equal(train, expected)
    sample = zero_shot_dataset("ade20k_847", root=tmp_path / "data", split="train")[0]
    assert (
        sample.semantic[0, 0] == IGNORE_INDEX and sample.semantic[0, 5] == 11 and sample.semantic[8, 5] == 0
    )
    assert sample.targets.labels.tolist() == [0, 11]
    assert prepare("ade20k_847", tmp_path / "raw", tmp_path / "data", show_progress=False).total_written == 0


def test_prepare_ade20k_847_writes_the_reference_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare_ade20k_full_sem_seg.py shrinks with cv2.INTER_NEAREST (source pixel floor(x * s)) and
    # cv2.INTER_LINEAR, and saves every image, shrunk or not, through PIL's JPEG encoder at its defaults.
    _fake_ade847(tmp_path / "raw")
    monkeypatch.setattr(ade20k_847, "MAX_SHORT_SIDE", 10)  # 20x30 -> 10x15: s = 2, source pixel 2x
    prepare("ade20k_847", tmp_path / "raw", tmp_path / "data", show_progress=False)
    raw = tmp_path / "raw/ADE20K_2021_17_01/images/ADE"
    base = tmp_path / "data/ADE20K_2021_17_01"
    seg = np.asarray(Image.open(raw / "validation/home/kitchen/ADE_val_00000001_seg.png"))
    class_ids = (seg[..., 0].astype(int) // 10) * 256 + seg[..., 1]
    table = {2978: 0, 1831: 11}
    expected = np.vectorize(lambda c: table.get(c, 65535))(class_ids[::2, ::2])
    labels = read_label_map(base / "annotations_detectron2/validation/ADE_val_00000001.tif")
    assert np.array_equal(labels, expected)

    def pil_default_jpeg(pixels: np.ndarray) -> bytes:
        out = BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG")
        return out.getvalue()

    original = np.asarray(Image.open(raw / "validation/home/kitchen/ADE_val_00000001.jpg"))
    shrunk = (base / "images_detectron2/validation/ADE_val_00000001.jpg").read_bytes()
    assert shrunk == pil_default_jpeg(resize_linear(original, (10, 15)))
    kept = np.asarray(Image.open(raw / "training/home/kitchen/ADE_train_00000001.jpg"))
    assert (base / "images_detectron2/training/ADE_train_00000001.jpg").read_bytes() == pil_default_jpeg(kept)


def test_prepare_ade20k_847_errors(tmp_path: Path) -> None:
    (tmp_path / "raw/ADE20K_2021_17_01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="index_ade20k.pkl"):
        prepare("ade20k_847", tmp_path / "raw", tmp_path / "data")
    with (tmp_path / "raw/ADE20K_2021_17_01/index_ade20k.pkl").open("wb") as f:
        pickle.dump({"filename": ["ADE_val_1.jpg"], "folder": ["ADE20K_2021_17_01/images/x"]}, f)
    with pytest.raises(FileNotFoundError, match="listed in index_ade20k.pkl but missing"):
        prepare("ade20k_847", tmp_path / "raw", tmp_path / "data", show_progress=False)


# ---- Pascal Context ----------------------------------------------------------------------------------------


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed COCO RLE: run lengths, column-major
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _fake_voc2010(src: Path) -> Path:
    raw = src / "VOCdevkit/VOC2010"
    (raw / "ImageSets/Main").mkdir(parents=True)
    (raw / "trainval").mkdir()
    from scipy.io import savemat

    images, annos = [], []
    for image_id, name, phase in ((1, "2008_000001", "train"), (2, "2008_000002", "val")):
        h, w = 11, 14
        _jpg(raw / "JPEGImages" / f"{name}.jpg", h, w)
        plane = np.zeros((h, w), dtype=bool)
        plane[:6] = True
        person = np.zeros((h, w), dtype=bool)
        person[4:9, 2:7] = True
        accordion = np.zeros((h, w), dtype=bool)
        accordion[10, :] = True
        annos += [
            {"id": 3 * image_id, "image_id": image_id, "category_id": 2, "segmentation": _rle(plane)},
            {
                "id": 3 * image_id + 1,
                "image_id": image_id,
                "category_id": 284,
                "segmentation": _rle(person, False),
            },
            {"id": 3 * image_id + 2, "image_id": image_id, "category_id": 1, "segmentation": _rle(accordion)},
        ]
        images.append(
            {"image_id": image_id, "file_name": f"{name}.jpg", "height": h, "width": w, "phase": phase}
        )
        label_map = np.zeros((h, w), dtype=np.uint16)
        label_map[:3] = 459
        label_map[5:, :4] = 284
        savemat(raw / "trainval" / f"{name}.mat", {"LabelMap": label_map})
        (raw / "ImageSets/Main" / f"{phase}.txt").write_text(f"{name}\n")
    save_json({"images": images, "annos_segmentation": annos, "categories": []}, raw / "trainval_merged.json")
    return raw


def test_prepare_pascal_context_59_and_459(tmp_path: Path) -> None:
    _fake_voc2010(tmp_path / "raw")
    dst = tmp_path / "data"
    s59 = prepare("pascal_context_59", tmp_path / "raw", dst, show_progress=False)
    assert s59.written == {"images": 2, "labels": 2}
    labels = read_label_map(dst / "pascal_ctx_d2/annotations_ctx59/validation/2008_000002.png")
    assert labels[0, 0] == 0 and labels[3, 10] == 0  # aeroplane (id 2) -> label 0
    assert labels[5, 3] == 36  # person (id 284) painted after the aeroplane wins -> label 36
    assert labels[10, 0] == 255 and labels[8, 12] == 255  # accordion is not one of the 59; unlabelled
    s459 = prepare("pascal_context_459", tmp_path / "raw", dst, show_progress=False)
    assert s459.written == {"labels": 2} and s459.skipped == {"images": 2}  # images shared with Context-59
    full = read_label_map(dst / "pascal_ctx_d2/annotations_ctx459/training/2008_000001.tif")
    assert full[0, 0] == 458 and full[6, 0] == 283 and full[6, 10] == 65535
    ctx59 = zero_shot_dataset("pascal_context_59", root=dst)[0]
    ctx459 = zero_shot_dataset("pascal_context_459", root=dst, split="train")[0]
    assert ctx59.targets.labels.tolist() == [0, 36] and ctx459.targets.labels.tolist() == [283, 458]
    assert ctx459.semantic[6, 10] == IGNORE_INDEX
    assert prepare("pascal_context_459", tmp_path / "raw", dst, show_progress=False).total_written == 0


def test_pascal_context_59_and_459_use_the_same_image_lists(tmp_path: Path) -> None:
    # The reference converts Context-459 for the images its Context-59 script copied (the `phase` lists of
    # trainval_merged.json); omtseg reads VOC2010 ImageSets/Main. On one download both give one image set.
    raw = _fake_voc2010(tmp_path / "raw")
    data = load_json(raw / "trainval_merged.json")
    data["images"].append(
        {"image_id": 3, "file_name": "2008_000003.jpg", "height": 11, "width": 14, "phase": "val"}
    )
    save_json(data, raw / "trainval_merged.json")
    _jpg(raw / "JPEGImages/2008_000003.jpg", 11, 14)
    (raw / "ImageSets/Main/val.txt").write_text("2008_000002\n2008_000003\n")
    from scipy.io import savemat

    savemat(raw / "trainval/2008_000003.mat", {"LabelMap": np.ones((11, 14), dtype=np.uint16)})
    dst = tmp_path / "data/pascal_ctx_d2"
    prepare("pascal_context_59", tmp_path / "raw", tmp_path / "data", show_progress=False)
    prepare("pascal_context_459", tmp_path / "raw", tmp_path / "data", show_progress=False)
    for split, split_dir in (("train", "training"), ("val", "validation")):
        phase = sorted(Path(i["file_name"]).stem for i in data["images"] if i["phase"] == split)
        main_list = sorted((raw / f"ImageSets/Main/{split}.txt").read_text().split())
        assert phase == main_list
        assert sorted(p.stem for p in (dst / "annotations_ctx59" / split_dir).iterdir()) == phase
        assert sorted(p.stem for p in (dst / "annotations_ctx459" / split_dir).iterdir()) == phase
        assert sorted(p.stem for p in (dst / "images" / split_dir).iterdir()) == phase


def test_prepare_pascal_context_errors(tmp_path: Path) -> None:
    raw = _fake_voc2010(tmp_path / "raw")
    (raw / "trainval_merged.json").unlink()
    with pytest.raises(FileNotFoundError, match="trainval_merged.json"):
        prepare("pascal_context_59", tmp_path / "raw", tmp_path / "data")
    for mat in (raw / "trainval").iterdir():
        mat.unlink()
    with pytest.raises(FileNotFoundError, match="PASCAL-Context label map of 2008_000001"):
        prepare("pascal_context_459", tmp_path / "raw", tmp_path / "data", show_progress=False)


# ---- Pascal VOC-20 -----------------------------------------------------------------------------------------


def _fake_voc2012(src: Path) -> Path:
    raw = src / "VOCdevkit/VOC2012"
    (raw / "ImageSets/Segmentation").mkdir(parents=True)
    for name, split in (("2007_000032", "train"), ("2007_000033", "val")):
        _jpg(raw / "JPEGImages" / f"{name}.jpg", 13, 10)
        indices = np.zeros((13, 10), dtype=np.uint8)
        indices[2:6, 2:6] = 1  # aeroplane
        indices[7:12, 1:9] = 20  # tvmonitor
        indices[6, :] = 255  # border
        im = Image.fromarray(indices)
        im.putpalette([v for i in range(256) for v in (i, i // 2, 255 - i)])
        (raw / "SegmentationClass").mkdir(exist_ok=True)
        im.save(raw / "SegmentationClass" / f"{name}.png")
        (raw / "ImageSets/Segmentation" / f"{split}.txt").write_text(f"{name}\n")
    return raw


def test_prepare_pascal_voc_20_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_voc2012(tmp_path / "downloads")
    args = ["pascal_voc_20", "--src", str(tmp_path / "downloads"), "--dst", str(tmp_path / "data"), "--quiet"]
    assert main(args + ["--splits", "val"]) == 0
    assert "labels: 1 written" in capsys.readouterr().out
    labels = read_label_map(tmp_path / "data/pascal_voc_d2/annotations_pascal20/validation/2007_000033.png")
    assert labels[3, 3] == 0 and labels[8, 4] == 19 and labels[0, 0] == 255 and labels[6, 0] == 255
    assert not (tmp_path / "data/pascal_voc_d2/images/training").exists()
    sample = zero_shot_dataset("pascal_voc_20", root=tmp_path / "data")[0]
    assert sample.targets.labels.tolist() == [0, 19]
    assert main(args) == 0 and "labels: 1 written, 1 kept" in capsys.readouterr().out


def test_prepare_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _fake_voc2012(tmp_path / "downloads")
    with pytest.raises(SystemExit):
        main(["pascal_voc_21", "--src", str(tmp_path)])
    assert run_command(["prepare", "pascal_voc_20", "--src", str(tmp_path / "nowhere")]) == 2
    message = capsys.readouterr().err
    assert "omtseg prepare: error: --src" in message and "not a folder" in message
    with pytest.raises(ValueError, match="Unknown splits"):
        prepare("pascal_voc_20", tmp_path / "downloads", tmp_path / "data", splits=["test"])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare("pascal_voc_20", tmp_path / "nowhere", tmp_path / "data")
    bad = np.full((13, 10), 21, dtype=np.uint8)
    Image.fromarray(bad).save(raw / "SegmentationClass/2007_000033.png")
    with pytest.raises(ValueError, match=r"\[21\]"):
        prepare(
            "pascal_voc_20", tmp_path / "downloads", tmp_path / "data", splits=["val"], show_progress=False
        )
    for p in (raw / "SegmentationClass").iterdir():
        p.unlink()
    (raw / "SegmentationClass").rmdir()
    with pytest.raises(FileNotFoundError, match="SegmentationClass.*VOCtrainval_11-May-2012.tar"):
        prepare("pascal_voc_20", tmp_path / "downloads", tmp_path / "data")
