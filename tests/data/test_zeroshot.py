"""Zero-shot benchmark vocabularies and datasets, on tiny layouts written in the real file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omtseg.data.benchmark_registry import (
    BENCHMARKS,
    ade20k_instance_labels,
    datasets_root,
    zero_shot_vocabulary,
)
from omtseg.data.collate import collate
from omtseg.data.transforms import EvalTransform, TrainTransform
from omtseg.data.vocabulary import read_vocabulary_tsv
from omtseg.data.zeroshot import (
    ADE20KPanopticDataset,
    SemanticSegmentationDataset,
    read_label_map,
    zero_shot_dataset,
)
from omtseg.evaluation.semantic import SemanticMetric
from omtseg.io import id2rgb, save_json
from omtseg.types import IGNORE_INDEX

# SceneParse150 ids (1-based) of the 100 instance classes, from Mask2Former's
# datasets/ade20k_instance_catid_mapping.txt: an independent source for ADE20K-150's thing flags.
ADE_INSTANCE_SCENEPARSE_IDS = [
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38,
    39, 40, 42, 43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68,
    70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93,
    94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125,
    126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
]  # fmt: skip
# The Detail API's fixed evaluation order of the 59 Pascal Context classes (detail/__init__.py `eval_orders`).
DETAIL_EVAL_ORDERS = [
    2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427,
    9, 18, 22, 33, 44, 46, 68, 80, 85, 104, 115, 144, 158, 159, 162, 187, 189, 220, 232, 259,
    260, 105, 296, 355, 295, 324, 326, 349, 354, 360, 366, 19, 415, 420, 424, 440, 445, 454, 458,
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("ade20k_150", 150),
        ("ade20k_150_panoptic", 150),
        ("ade20k_847", 847),
        ("pascal_context_59", 59),
        ("pascal_context_459", 459),
        ("pascal_voc_20", 20),
    ],
)
def test_vocabulary_sizes(name: str, size: int) -> None:
    vocabulary = zero_shot_vocabulary(name)
    assert len(vocabulary) == size == BENCHMARKS[name].num_classes
    assert all(len(s) >= 1 and s[0] == n for s, n in zip(vocabulary.synonyms, vocabulary.names, strict=True))
    assert all(len(set(s)) == len(s) for s in vocabulary.synonyms)


def test_ade150_things_match_the_instance_mapping() -> None:
    vocabulary = zero_shot_vocabulary("ade20k_150")
    assert [k for k, t in enumerate(vocabulary.is_thing) if t] == [i - 1 for i in ADE_INSTANCE_SCENEPARSE_IDS]
    assert vocabulary.category_ids == tuple(range(150))
    assert vocabulary.synonyms[6] == ("road", "route") and vocabulary.names[8] == "window"
    mapping = ade20k_instance_labels()
    assert mapping == {j: i - 1 for j, i in enumerate(ADE_INSTANCE_SCENEPARSE_IDS, start=1)}


def test_class_ids_of_847_and_context59() -> None:
    ade = zero_shot_vocabulary("ade20k_847")
    by_id = dict(zip(ade.category_ids, ade.names, strict=True))
    # Object ids from the FullADE20K column of Mask2Former's instance mapping.
    assert by_id[2978] == "wall" and by_id[1831] == "person" and by_id[165] == "bed"
    assert by_id[2733] == "television receiver" and by_id[3148] == "adding machine"
    assert ade.category_ids[0] == 2978 and ade.category_ids[-1] == 3148
    ctx = zero_shot_vocabulary("pascal_context_59")
    assert sorted(ctx.category_ids) == list(ctx.category_ids) == sorted(DETAIL_EVAL_ORDERS)
    full = zero_shot_vocabulary("pascal_context_459")
    assert full.category_ids == tuple(range(1, 460))
    assert all(
        full.names[cid - 1].split()[0] in " ".join(syn) or cid in (85, 324, 397)
        for cid, syn in zip(ctx.category_ids, ctx.synonyms, strict=True)
    )
    assert zero_shot_vocabulary("pascal_voc_20").synonyms[19] == ("tvmonitor", "monitor", "tv")


def test_read_vocabulary_file_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("# comment\n7\tdog, puppy, dog\n9\tcat\n")
    vocabulary = read_vocabulary_tsv(path)
    assert vocabulary.synonyms == (("dog", "puppy"), ("cat",))
    assert vocabulary.category_ids == (7, 9) and vocabulary.is_thing == (False, False)
    path.write_text("0\t1\t1,2,3\tdog\n")
    assert read_vocabulary_tsv(path).colors == ((1, 2, 3),)
    path.write_text("0\tdog\n1\t2\tcat\n")
    with pytest.raises(ValueError, match=r"v\.txt:2"):
        read_vocabulary_tsv(path)
    path.write_text("0\t5\t1,2,3\tdog\n")
    with pytest.raises(ValueError, match="isthing"):
        read_vocabulary_tsv(path)
    with pytest.raises(FileNotFoundError):
        read_vocabulary_tsv(tmp_path / "none.txt")
    with pytest.raises(ValueError, match="Unknown zero-shot benchmark"):
        zero_shot_vocabulary("ade20k_151")


def test_datasets_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMTSEG_DATASETS", raising=False)
    assert datasets_root() == Path("data")
    monkeypatch.setenv("OMTSEG_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    assert BENCHMARKS["ade20k_847"].path(BENCHMARKS["ade20k_847"].labels, "val") == (
        tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation"
    )
    with pytest.raises(ValueError, match="split"):
        BENCHMARKS["ade20k_847"].path("x", "test")


def _write_semantic_layout(root: Path, name: str, labels: list[np.ndarray], split: str = "val") -> None:
    spec = BENCHMARKS[name]
    image_dir, label_dir = spec.path(spec.images, split, root), spec.path(spec.labels, split, root)
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    dtype = np.uint16 if spec.label_suffix == ".tif" else np.uint8
    rng = np.random.default_rng(0)
    for i, lab in enumerate(labels):
        h, w = lab.shape
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_dir / f"img_{i}.jpg")
        Image.fromarray(lab.astype(dtype)).save(label_dir / f"img_{i}{spec.label_suffix}")


@pytest.mark.parametrize(
    "name", ["ade20k_150", "ade20k_847", "pascal_context_59", "pascal_context_459", "pascal_voc_20"]
)
def test_semantic_dataset_reads_labels_and_ignore(tmp_path: Path, name: str) -> None:
    spec = BENCHMARKS[name]
    k = spec.num_classes
    lab = np.full((37, 53), spec.ignore_value, dtype=np.int64)
    lab[:10, :20] = 0
    lab[10:30, 5:40] = k - 1
    lab[30:, 40:] = k // 2
    empty = np.full((21, 9), spec.ignore_value, dtype=np.int64)
    _write_semantic_layout(tmp_path, name, [lab, empty])
    dataset = zero_shot_dataset(name, root=tmp_path)
    assert isinstance(dataset, SemanticSegmentationDataset) and len(dataset) == 2

    sample = dataset[0]
    assert sample.image.shape == (3, 37, 53) and sample.image.dtype == torch.uint8
    expected = torch.from_numpy(np.where(lab == spec.ignore_value, IGNORE_INDEX, lab))
    assert torch.equal(sample.semantic, expected)
    assert sample.targets.labels.tolist() == [0, k // 2, k - 1]
    assert sample.targets.masks.shape == (3, 37, 53)
    assert torch.equal(sample.targets.void, expected == IGNORE_INDEX)
    assert torch.equal(sample.targets.semantic(), sample.semantic)
    assert sample.info.orig_size == (37, 53) and sample.info.image_id == "img_0"

    blank = dataset[1]  # every pixel ignored: no segment at all
    assert blank.targets.labels.shape == (0,) and blank.targets.masks.shape == (0, 21, 9)
    assert bool((blank.semantic == IGNORE_INDEX).all())


def test_label_maps_keep_uint16_and_palette_values(tmp_path: Path) -> None:
    tif = tmp_path / "a.tif"
    Image.fromarray(np.array([[0, 846], [65535, 3]], dtype=np.uint16)).save(tif)
    assert Image.open(tif).mode == "I;16"
    assert read_label_map(tif).tolist() == [[0, 846], [65535, 3]]
    png = tmp_path / "p.png"
    palette = Image.fromarray(np.array([[0, 20], [255, 7]], dtype=np.uint8))
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    palette.save(png)
    assert Image.open(png).mode == "P" and read_label_map(png).tolist() == [[0, 20], [255, 7]]
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="single-channel"):
        read_label_map(rgb)


def test_semantic_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="omtseg prepare pascal_voc_20"):
        zero_shot_dataset("pascal_voc_20", root=tmp_path)
    _write_semantic_layout(tmp_path, "pascal_voc_20", [np.full((8, 8), 20), np.zeros((5, 6))])
    spec = BENCHMARKS["pascal_voc_20"]
    dataset = zero_shot_dataset("pascal_voc_20", root=tmp_path)
    with pytest.raises(ValueError, match=r"values \[20\]"):  # 20 is past the last class (19)
        dataset[0]
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(
        spec.path(spec.labels, "val", tmp_path) / "img_1.png"
    )
    with pytest.raises(ValueError, match="belongs to another image"):
        dataset[1]
    (spec.path(spec.labels, "val", tmp_path) / "img_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 images have no label map"):
        zero_shot_dataset("pascal_voc_20", root=tmp_path)


def test_semantic_dataset_through_transforms_and_collate(tmp_path: Path) -> None:
    lab = np.full((45, 31), 255, dtype=np.int64)
    lab[5:30, 3:20] = 4
    lab[30:, :] = 11
    _write_semantic_layout(tmp_path, "pascal_context_59", [lab, lab[:20, :29]])
    train = zero_shot_dataset("pascal_context_59", root=tmp_path, transform=TrainTransform(crop_size=32))
    a, b = train[(0, 7)], train[(0, 7)]
    assert torch.equal(a.image, b.image) and torch.equal(a.semantic, b.semantic)
    assert a.image.shape == (3, 32, 32)
    # Targets and the semantic map move together; padding is ignore in both.
    assert torch.equal(a.targets.semantic(), a.semantic)
    evaluation = zero_shot_dataset("pascal_context_59", root=tmp_path, transform=EvalTransform(size=64))
    samples = [evaluation[0], evaluation[1]]
    batch = collate(samples, vocabulary=evaluation.vocabulary)
    assert batch.semantic.shape == batch.images.shape[:1] + batch.images.shape[2:]
    assert set(torch.unique(batch.semantic).tolist()) <= {IGNORE_INDEX, 4, 11}
    assert bool((batch.semantic[batch.padding_mask] == IGNORE_INDEX).all())

    # The mIoU metric reads the batch's semantic maps as they are: a perfect prediction scores 1.
    metric = SemanticMetric(num_classes=len(evaluation.vocabulary))
    metric.update(batch.semantic.clamp(min=0), batch.semantic)
    assert metric.compute()["mIoU"] == 1.0
    metric.update(torch.where(batch.semantic == 4, 11, batch.semantic.clamp(min=0)), batch.semantic)
    assert metric.compute()["IoU"][4] == 0.5


def _write_ade_panoptic(root: Path, categories: list[dict]) -> None:
    base = root / "ADEChallengeData2016"
    for folder in ("images/validation", "annotations_detectron2/validation", "ade20k_panoptic_val"):
        (base / folder).mkdir(parents=True)
    ids = np.zeros((19, 23), dtype=np.int64)
    ids[:, :10] = 1  # wall (stuff, label 0)
    ids[2:8, 12:20] = 2  # a bed instance (thing, label 7)
    semantic = np.full((19, 23), 255, dtype=np.uint8)
    semantic[:, :10] = 0
    semantic[2:8, 12:20] = 7
    semantic[10:15, 12:20] = 7  # a bed pixel region without an instance: in mIoU, void for PQ
    Image.fromarray(np.zeros((19, 23, 3), dtype=np.uint8)).save(base / "images/validation/ADE_val_1.jpg")
    Image.fromarray(semantic).save(base / "annotations_detectron2/validation/ADE_val_1.png")
    Image.fromarray(id2rgb(ids)).save(base / "ade20k_panoptic_val/ADE_val_1.png")
    segments = [
        {"id": 1, "category_id": 0, "area": int((ids == 1).sum()), "iscrowd": 0},
        {"id": 2, "category_id": 7, "area": int((ids == 2).sum()), "iscrowd": 0},
    ]
    save_json(
        {
            "images": [{"id": "ADE_val_1", "file_name": "ADE_val_1.jpg", "width": 23, "height": 19}],
            "annotations": [
                {"image_id": "ADE_val_1", "file_name": "ADE_val_1.png", "segments_info": segments}
            ],
            "categories": categories,
        },
        base / "ade20k_panoptic_val.json",
    )


def _ade_categories() -> list[dict]:
    v = zero_shot_vocabulary("ade20k_150")
    return [
        {"id": cid, "name": ", ".join(s), "isthing": int(t), "color": list(c)}
        for cid, s, t, c in zip(v.category_ids, v.synonyms, v.is_thing, v.colors, strict=True)
    ]


def test_ade20k_panoptic_dataset(tmp_path: Path) -> None:
    _write_ade_panoptic(tmp_path, _ade_categories())
    dataset = zero_shot_dataset("ade20k_150_panoptic", root=tmp_path)
    assert isinstance(dataset, ADE20KPanopticDataset) and len(dataset) == 1
    sample = dataset[0]
    assert sample.targets.labels.tolist() == [0, 7]
    assert sample.targets.is_thing.tolist() == [False, True]
    assert sample.semantic[12, 15] == 7 and sample.targets.void[12, 15]  # class without instance
    assert sample.semantic[0, 22] == IGNORE_INDEX
    assert dataset.vocabulary.synonyms[6] == ("road", "route")
    no_sem = ADE20KPanopticDataset(root=tmp_path, with_semantic=False)
    assert no_sem[0].semantic is None


def test_ade20k_panoptic_dataset_rejects_other_categories(tmp_path: Path) -> None:
    categories = _ade_categories()
    categories[0]["isthing"] = 1
    _write_ade_panoptic(tmp_path, categories)
    with pytest.raises(ValueError, match="ADE20K-150's categories"):
        ADE20KPanopticDataset(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="omtseg prepare ade20k_150"):
        ADE20KPanopticDataset(root=tmp_path / "elsewhere")
