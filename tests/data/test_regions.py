"""Region-caption data: Visual Genome and RefCOCOg in their official layouts, weak and synthetic captions."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omtseg.data.caption_text import (
    class_name_captions,
    color_name,
    synthetic_caption_words,
    synthetic_region_captions,
)
from omtseg.data.coco_panoptic import CocoPanopticDataset, PanopticSplit
from omtseg.data.regions import (
    PanopticRegionCaptions,
    RefCocoRegions,
    RegionSample,
    VisualGenomeRegions,
    collate_regions,
    densecap_split_ids,
)
from omtseg.data.synthetic import synthetic_vocabulary
from omtseg.types import ImageInfo, Targets, Vocabulary


def _targets(masks: torch.Tensor, labels: list[int], is_thing: list[bool]) -> Targets:
    n, h, w = masks.shape
    return Targets(
        labels=torch.tensor(labels, dtype=torch.long),
        masks=masks,
        is_thing=torch.tensor(is_thing),
        crowd_labels=torch.zeros(0, dtype=torch.long),
        crowd_masks=torch.zeros(0, h, w, dtype=torch.bool),
        void=torch.zeros(h, w, dtype=torch.bool),
        segment_ids=torch.arange(1, n + 1),
    )


def _save_jpg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------------------ Visual Genome


@pytest.fixture
def vg_root(tmp_path: Path) -> Path:
    regions = [
        {
            "id": 1,
            "regions": [
                {
                    "region_id": 11,
                    "image_id": 1,
                    "phrase": "a red car ",
                    "x": 2,
                    "y": 3,
                    "width": 4,
                    "height": 2,
                },
                {
                    "region_id": 12,
                    "image_id": 1,
                    "phrase": "the sky",
                    "x": 0,
                    "y": 0,
                    "width": 0,
                    "height": 0,
                },
            ],
        },
        {"id": 2, "regions": []},
        {
            "id": 3,
            "regions": [
                {
                    "region_id": 31,
                    "image_id": 3,
                    "phrase": "grass",
                    "x": 10,
                    "y": 0,
                    "width": 20,
                    "height": 10,
                }
            ],
        },
    ]
    (tmp_path / "region_descriptions.json").write_text(json.dumps(regions))
    _save_jpg(tmp_path / "VG_100K" / "1.jpg", 9, 11)
    _save_jpg(tmp_path / "VG_100K_2" / "3.jpg", 20, 40)
    return tmp_path


def test_visual_genome_boxes_become_box_masks(vg_root: Path) -> None:
    ds = VisualGenomeRegions(
        region_descriptions=vg_root / "region_descriptions.json",
        image_dirs=[vg_root / "VG_100K", vg_root / "VG_100K_2"],
        max_size=None,
    )
    assert len(ds) == 2  # the image without regions is skipped
    s = ds[0]
    assert s.image.shape == (3, 9, 11) and s.region_ids == ["11", "12"]
    assert s.captions == [["a red car"], ["the sky"]]
    expected = torch.zeros(9, 11, dtype=torch.bool)
    expected[3:5, 2:6] = True  # x 2..6, y 3..5: pixel centres 2.5..5.5 and 3.5, 4.5
    assert torch.equal(s.masks[0], expected)
    assert s.masks[1].sum() == 1 and s.masks[1, 0, 0]  # a zero-size box keeps its pixel


def test_visual_genome_resizes_and_selects_images(vg_root: Path) -> None:
    ds = VisualGenomeRegions(
        region_descriptions=vg_root / "region_descriptions.json",
        image_dirs=[vg_root / "VG_100K", vg_root / "VG_100K_2"],
        image_ids=[3],
        max_size=20,
    )
    s = ds[0]
    assert s.image.shape == (3, 10, 20) and s.info.orig_size == (20, 40) and s.info.resized_size == (10, 20)
    expected = torch.zeros(10, 20, dtype=torch.bool)
    expected[0:5, 5:15] = True  # the box x 10..30, y 0..10 halved
    assert torch.equal(s.masks[0], expected)
    with pytest.raises(ValueError, match="have no regions"):
        VisualGenomeRegions(
            region_descriptions=vg_root / "region_descriptions.json", image_dirs=[vg_root], image_ids=[2]
        )
    with pytest.raises(FileNotFoundError, match="image folders"):
        VisualGenomeRegions(
            region_descriptions=vg_root / "region_descriptions.json", image_dirs=[vg_root / "x"]
        )
    (vg_root / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="region_descriptions"):
        VisualGenomeRegions(region_descriptions=vg_root / "bad.json", image_dirs=[vg_root])


def test_visual_genome_dense_captioning_splits(vg_root: Path) -> None:
    (vg_root / "densecap_splits.json").write_text(json.dumps({"train": [1], "val": [], "test": [3]}))
    grit = {"images": [{"id": 3, "file_name": "3.jpg"}], "annotations": []}  # GRiT's COCO-style test.json
    (vg_root / "test.json").write_text(json.dumps(grit))
    dirs = [vg_root / "VG_100K", vg_root / "VG_100K_2"]
    cases = [("densecap_splits.json", "test", [3]), ("densecap_splits.json", "train", [1])]
    cases.append(("test.json", "test", [3]))
    for split_file, split, ids in cases:
        ds = VisualGenomeRegions(
            region_descriptions=vg_root / "region_descriptions.json", image_dirs=dirs,
            split_file=vg_root / split_file, split=split, max_size=None,
        )  # fmt: skip
        assert [ds[i].info.image_id for i in range(len(ds))] == ids
    assert densecap_split_ids(vg_root / "densecap_splits.json", "val") == []
    with pytest.raises(ValueError, match="no 'dev' split"):
        densecap_split_ids(vg_root / "densecap_splits.json", "dev")
    with pytest.raises(ValueError, match="not both"):
        VisualGenomeRegions(
            region_descriptions=vg_root / "region_descriptions.json", image_dirs=dirs, image_ids=[1],
            split_file=vg_root / "test.json",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- RefCOCOg


def test_refcocog_refs_and_instances(tmp_path: Path) -> None:
    images = [
        {"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": 12, "width": 16},
        {"id": 6, "file_name": "COCO_train2014_000000000006.jpg", "height": 12, "width": 16},
    ]
    annotations = [  # a polygon rectangle and an uncompressed RLE (as crowd annotations are stored)
        {"id": 50, "image_id": 5, "category_id": 1, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]], "iscrowd": 0},
        {
            "id": 51,
            "image_id": 5,
            "category_id": 1,
            "iscrowd": 1,
            "segmentation": {"counts": [24, 12, 156], "size": [12, 16]},
        },  # column-major: columns 2 of rows 0..11
        {"id": 60, "image_id": 6, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0},
    ]
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    refs = [
        {
            "ref_id": 0,
            "ann_id": 50,
            "image_id": 5,
            "split": "val",
            "file_name": "x_5_0.jpg",
            "category_id": 1,
            "sentences": [{"sent": "the box on the left", "raw": "The box on the left."}, {"sent": "a box"}],
        },
        {
            "ref_id": 1,
            "ann_id": 51,
            "image_id": 5,
            "split": "val",
            "file_name": "x_5_1.jpg",
            "category_id": 1,
            "sentences": [{"sent": "the pole"}],
        },
        {
            "ref_id": 2,
            "ann_id": 60,
            "image_id": 6,
            "split": "train",
            "file_name": "x_6_2.jpg",
            "category_id": 1,
            "sentences": [{"sent": "a triangle"}],
        },
    ]
    (tmp_path / "refs(umd).p").write_bytes(pickle.dumps(refs))
    for img in images:
        _save_jpg(tmp_path / "train2014" / img["file_name"], 12, 16)
    ds = RefCocoRegions(
        refs=tmp_path / "refs(umd).p", instances=tmp_path / "instances.json", image_dir=tmp_path / "train2014"
    )
    assert len(ds) == 1
    s = ds[0]
    assert s.region_ids == ["0", "1"] and s.captions == [["the box on the left", "a box"], ["the pole"]]
    assert s.masks.shape == (2, 12, 16)
    ys, xs = torch.nonzero(s.masks[0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 5, 2, 7)  # polygon x 2..8, y 2..6 (half-open)
    assert torch.equal(
        s.masks[1], torch.zeros(12, 16, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True)
    )
    with pytest.raises(ValueError, match="split 'testB'"):
        RefCocoRegions(
            refs=tmp_path / "refs(umd).p",
            instances=tmp_path / "instances.json",
            image_dir=tmp_path,
            split="testB",
        )


# ----------------------------------------------------------------------------------- weak and synthetic


def test_class_name_captions_use_the_template() -> None:
    vocab = Vocabulary.from_names(["cat", "traffic light"])
    t = _targets(torch.zeros(2, 4, 4, dtype=torch.bool), [1, 0], [True, True])
    assert class_name_captions(t, vocab) == ["a photo of a traffic light", "a photo of a cat"]
    assert class_name_captions(t, vocab, "{name}") == ["traffic light", "cat"]
    with pytest.raises(ValueError, match="lacks"):
        class_name_captions(t, vocab, "a photo")


def test_synthetic_captions_by_hand() -> None:
    vocab = synthetic_vocabulary()
    idx = {n: i for i, n in enumerate(vocab.names)}
    masks = torch.zeros(4, 100, 100, dtype=torch.bool)
    masks[0, 10:20, 10:20] = True  # ball, 1% of the image: small
    masks[1, 50:80, 40:80] = True  # box, 12%: large; the ball is above-left, more above than left
    masks[2, :40] = True  # sky band, centroid row 19.5 -> top third
    masks[3, 40:] = True
    masks[3] &= ~(masks[0] | masks[1])
    masks[2] &= ~masks[0]
    t = _targets(masks, [idx["ball"], idx["box"], idx["sky"], idx["grass"]], [True, True, False, False])
    assert synthetic_region_captions(t, vocab) == [
        "a small red ball above a large purple box",
        "a large purple box below a small red ball",
        "blue sky at the top",
        "green grass at the bottom",
    ]
    flipped = _targets(masks[[0, 1]].flip(-1), [idx["ball"], idx["traffic cone"]], [True, True])
    flipped.masks[0] = torch.roll(flipped.masks[0], 45, dims=0)  # now beside the cone, to its right
    assert synthetic_region_captions(flipped, vocab) == [
        "a small red ball right of a large orange traffic cone",
        "a large orange traffic cone left of a small red ball",
    ]
    lone = _targets(masks[[0, 2, 3]], [idx["ball"], idx["sky"], idx["grass"]], [True, False, False])
    assert synthetic_region_captions(lone, vocab)[0] == "a small red ball in front of the sky"
    assert synthetic_region_captions(_targets(masks[:0], [], []), vocab) == []


def test_color_names_of_the_synthetic_classes() -> None:
    vocab = synthetic_vocabulary()
    names = dict(zip(vocab.names, (color_name(c) for c in vocab.colors), strict=True))
    assert names == {
        "ball": "red",
        "box": "purple",
        "traffic cone": "orange",
        "starfish": "yellow",
        "donut": "pink",
        "sky": "blue",
        "grass": "green",
        "sand": "tan",
        "water": "teal",
        "wall": "brown",
        "road": "gray",
    }


@pytest.mark.parametrize("mode", ["synthetic", "class_name"])
def test_panoptic_region_captions_on_the_synthetic_dataset(synthetic_train: PanopticSplit, mode: str) -> None:
    base = CocoPanopticDataset(**asdict(synthetic_train))
    ds = PanopticRegionCaptions(dataset=base, vocabulary=base.vocabulary, captions=mode)
    words = set(synthetic_caption_words(base.vocabulary))
    for i in range(4):
        s, ref = ds[i], base[i]
        assert s.masks.shape[0] == len(s.captions) == len(s.region_ids) == ref.targets.labels.shape[0]
        assert all(set(c[0].split()) <= words for c in s.captions), s.captions
    with pytest.raises(ValueError, match="captions must be"):
        PanopticRegionCaptions(dataset=base, vocabulary=base.vocabulary, captions="nope")


def test_collate_regions_pads_and_flattens() -> None:
    def sample(h: int, w: int, s: int, key: str) -> RegionSample:
        return RegionSample(
            image=torch.full((3, h, w), 7, dtype=torch.uint8),
            masks=torch.ones(s, h, w, dtype=torch.bool),
            captions=[[f"{key}{k}"] for k in range(s)],
            region_ids=[f"{key}{k}" for k in range(s)],
            info=ImageInfo(image_id=key, file_name=key, orig_size=(h, w), resized_size=(h, w)),
        )

    batch = collate_regions([sample(33, 17, 2, "a"), sample(5, 40, 0, "b"), sample(7, 9, 1, "c")])
    assert batch.images.shape == (3, 3, 64, 64) and batch.masks.shape == (3, 64, 64)
    assert batch.segment_batch_index.tolist() == [0, 0, 2]
    assert batch.region_ids == ["a0", "a1", "c0"]
    assert batch.masks[0].sum() == 33 * 17 and batch.masks[2].sum() == 7 * 9
    assert batch.images[1, :, 5:].sum() == 0 and batch.images[1, :, :5, :40].float().mean() == 7
    empty = collate_regions([sample(8, 8, 0, "x")], size_divisibility=1)
    assert empty.masks.shape == (0, 8, 8) and empty.segment_batch_index.shape == (0,)
    with pytest.raises(ValueError, match="empty list"):
        collate_regions([])
