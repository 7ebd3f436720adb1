from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omtseg.data.coco_panoptic import CocoPanopticDataset, PanopticSplit
from omtseg.evaluation.panoptic import PanopticQuality
from omtseg.evaluation.pq import paint_targets
from omtseg.io import id2rgb, read_image, read_panoptic_png
from omtseg.types import IGNORE_INDEX, PanopticResult, PanopticSegment


def _dataset(split: PanopticSplit, **overrides: object) -> CocoPanopticDataset:
    kwargs = dict(
        image_dir=split.image_dir,
        panoptic_dir=split.panoptic_dir,
        panoptic_json=split.panoptic_json,
        categories_json=split.categories_json,
    )
    kwargs.update(overrides)
    return CocoPanopticDataset(**kwargs)


def _check_against_files(ds: CocoPanopticDataset, index: int) -> None:
    """Every target is re-derived from the PNG and the JSON, independently of the loader."""
    sample = ds[index]
    t = sample.targets
    ann = json.loads(Path(ds.panoptic_json).read_text())["annotations"][index]
    ids = read_panoptic_png(Path(ds.panoptic_dir) / ann["file_name"])
    image = read_image(ds.image_dir / sample.info.file_name)
    assert sample.image.dtype == torch.uint8
    assert torch.equal(sample.image, torch.from_numpy(image).permute(2, 0, 1))
    assert sample.info.orig_size == sample.info.resized_size == ids.shape
    assert not sample.info.flipped

    # Masks reconstruct the PNG: regular segments by id, crowd as their union, void as id 0.
    rebuilt = np.zeros_like(ids)
    for seg_id, mask in zip(t.segment_ids.tolist(), t.masks, strict=True):
        assert mask.any()
        rebuilt[mask.numpy()] = seg_id
    crowd_ids = [s["id"] for s in ann["segments_info"] if s["iscrowd"]]
    crowd_union = np.isin(ids, crowd_ids)
    assert np.array_equal(rebuilt[~crowd_union], ids[~crowd_union])
    assert t.crowd_masks.shape[0] == len(crowd_ids)
    assert np.array_equal(t.crowd_masks.sum(0).numpy() > 0, crowd_union)
    assert np.array_equal(t.void.numpy(), ids == 0)
    coverage = t.masks.sum(0) + t.crowd_masks.sum(0) + t.void.long()
    assert torch.equal(coverage, torch.ones_like(coverage)), "masks, crowd and void partition the image"

    # Labels and the semantic map, from the JSON's category ids.
    cat_to_class = {cid: k for k, cid in enumerate(ds.vocabulary.category_ids)}
    segs = {s["id"]: s for s in ann["segments_info"]}
    assert t.labels.tolist() == [cat_to_class[segs[i]["category_id"]] for i in t.segment_ids.tolist()]
    assert t.is_thing.tolist() == [ds.vocabulary.is_thing[k] for k in t.labels.tolist()]
    assert sorted(t.crowd_labels.tolist()) == sorted(cat_to_class[segs[i]["category_id"]] for i in crowd_ids)
    expected = np.full(ids.shape, IGNORE_INDEX)
    for seg_id, seg in segs.items():
        if not seg["iscrowd"]:
            expected[ids == seg_id] = cat_to_class[seg["category_id"]]
    assert np.array_equal(t.semantic().numpy(), expected)


def test_reads_the_real_coco_sample(coco_sample: PanopticSplit) -> None:
    ds = _dataset(coco_sample)
    assert len(ds) == 2
    assert len(ds.vocabulary) == 133 and sum(ds.vocabulary.is_thing) == 80
    counts = {}
    for i in range(len(ds)):
        s = ds[i]
        counts[s.info.image_id] = len(s.targets.labels) + len(s.targets.crowd_labels)
        _check_against_files(ds, i)
    assert counts == {142238: 18, 439180: 32}
    assert ds[0].info.orig_size == (427, 640)


def test_categories_from_panoptic_json_match_the_separate_file(coco_sample: PanopticSplit) -> None:
    separate = _dataset(coco_sample).vocabulary
    embedded = _dataset(coco_sample, categories_json=None).vocabulary
    assert separate == embedded


def test_reads_synthetic_data_round_trip(synthetic_train: PanopticSplit) -> None:
    ds = _dataset(synthetic_train)
    assert len(ds) == 24 and len(ds.vocabulary) == 11
    crowd_seen = False
    for i in range(len(ds)):
        _check_against_files(ds, i)
        crowd_seen |= len(ds[i].targets.crowd_labels) > 0
    assert crowd_seen, "the synthetic split should contain at least one crowd segment"


def test_item_with_seed_uses_the_transform_generator(synthetic_train: PanopticSplit) -> None:
    draws = []

    def transform(sample, generator):  # records one draw of the generator it is given
        draws.append(float(torch.rand((), generator=generator)))
        return sample

    ds = _dataset(synthetic_train, transform=transform)
    ds[(1, 123)], ds[(1, 123)], ds[(1, 124)]
    assert draws[0] == draws[1] != draws[2]


@pytest.fixture
def broken(tmp_path: Path, synthetic_train: PanopticSplit) -> PanopticSplit:
    """A writable copy of the synthetic split to damage."""
    root = tmp_path / "copy"
    shutil.copytree(Path(synthetic_train.image_dir), root / "images")
    shutil.copytree(Path(synthetic_train.panoptic_dir), root / "panoptic")
    shutil.copy(synthetic_train.panoptic_json, root / "panoptic.json")
    return PanopticSplit(str(root / "images"), str(root / "panoptic"), str(root / "panoptic.json"))


def _edit_json(split: PanopticSplit, edit) -> None:
    data = json.loads(Path(split.panoptic_json).read_text())
    edit(data)
    Path(split.panoptic_json).write_text(json.dumps(data))


def test_error_missing_json(broken: PanopticSplit) -> None:
    Path(broken.panoptic_json).unlink()
    with pytest.raises(FileNotFoundError, match=r"Panoptic JSON not found: .*panoptic\.json"):
        _dataset(broken)


def test_error_missing_folders(broken: PanopticSplit) -> None:
    with pytest.raises(FileNotFoundError, match="Image folder not found: .*nowhere"):
        _dataset(broken, image_dir="/nowhere")
    with pytest.raises(FileNotFoundError, match="Panoptic PNG folder not found: .*nowhere"):
        _dataset(broken, panoptic_dir="/nowhere")


def test_error_missing_png_and_image(broken: PanopticSplit) -> None:
    ds = _dataset(broken)
    (Path(broken.panoptic_dir) / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Panoptic PNG not found: .*000001\.png"):
        ds[1]
    (Path(broken.image_dir) / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*000002\.png"):
        ds[2]
    ds[0]  # the intact items still load


def test_error_png_segment_absent_from_json(broken: PanopticSplit) -> None:
    dropped = {}

    def drop_one(data):
        dropped["id"] = data["annotations"][0]["segments_info"].pop()["id"]

    _edit_json(broken, drop_one)
    with pytest.raises(ValueError, match=rf"000000\.png contains segment ids \[{dropped['id']}\]"):
        _dataset(broken)[0]


def test_json_segment_absent_from_png_is_an_empty_false_negative(broken: PanopticSplit) -> None:
    # The reference ADE20K-150 panoptic files list stuff that instances cover completely; panopticapi counts
    # such a segment as a false negative (it can match no prediction), so it loads as an empty mask.
    def add_hidden(data):
        data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})

    _edit_json(broken, add_hidden)
    ds = _dataset(broken)
    sample = ds[0]
    hidden = sample.targets.segment_ids.tolist().index(4242)
    assert not sample.targets.masks[hidden].any()
    assert sample.targets.masks.sum(0).max() <= 1  # the visible segments are untouched
    # Ground truth predicted perfectly for the visible segments: the hidden one is the only miss.
    metric = PanopticQuality(vocabulary=ds.vocabulary)
    id_map, seg_ids, labels, _ = paint_targets(sample.targets)
    visible = [
        PanopticSegment(id=int(i), label=int(c), is_thing=ds.vocabulary.is_thing[c], score=1.0, area=1)
        for i, c, m in zip(seg_ids, labels, sample.targets.masks, strict=False)
        if m.any()
    ]
    metric.update([PanopticResult(id_map=id_map, segments=visible)], [sample.targets])
    k = ds.vocabulary.category_ids.index(1)
    assert int(metric.fn[k]) == 1 and int(metric.fp.sum()) == 0


def test_error_unknown_category(broken: PanopticSplit) -> None:
    _edit_json(broken, lambda d: d["annotations"][3]["segments_info"][0].update(category_id=999))
    with pytest.raises(ValueError, match=r"panoptic\.json: segment .* unknown category id 999"):
        _dataset(broken)


def test_error_inconsistent_json(broken: PanopticSplit) -> None:
    _edit_json(broken, lambda d: d["annotations"][0].update(image_id=777))
    with pytest.raises(ValueError, match="image id 777, which is not in 'images'"):
        _dataset(broken)
    _edit_json(broken, lambda d: d.pop("categories"))
    with pytest.raises(ValueError, match="has no 'categories'; pass categories_json"):
        _dataset(broken)
    Path(broken.panoptic_json).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _dataset(broken)


def test_error_corrupt_or_truncated_image(broken: PanopticSplit) -> None:
    ds = _dataset(broken)
    truncated = Path(broken.image_dir) / "000000.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"Cannot read image .*000000\.png.*corrupt or truncated"):
        ds[0]
    (Path(broken.image_dir) / "000001.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"Cannot read image .*000001\.png"):
        ds[1]


def test_error_png_size_differs_from_image(broken: PanopticSplit) -> None:
    Image.fromarray(id2rgb(np.zeros((10, 12)))).save(Path(broken.panoptic_dir) / "000000.png")
    with pytest.raises(ValueError, match=r"000000\.png is 12x10 but its image"):
        _dataset(broken)[0]
