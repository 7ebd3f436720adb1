"""`omtseg.Segmenter`: images in any form, results at the image's size, batching, the vocabulary and its
cache, thresholds, captions, and clear errors."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from _tiny_segmenter import CAPTION_WORDS, IMAGE_SIZE, make_captioner, make_checkpoint, make_images
from PIL import Image

from omtseg import SegmentationResult, Segmenter
from omtseg.captioning.inference import SegmenterTap
from omtseg.io import rgb2id

CLASSES = ["cat", "stuff: sky", "tv, monitor", "dog"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("api")
    images = make_images(folder / "images", count=3)
    return {"ckpt": make_checkpoint(folder / "tiny.ckpt"), "captioner": make_captioner(folder),
            **{f"img{i}": p for i, p in enumerate(images)}}


@pytest.fixture(scope="module")
def seg(files: dict[str, Path]) -> Segmenter:
    return Segmenter.from_checkpoint(files["ckpt"], device="cpu", image_size=IMAGE_SIZE)


def test_every_image_form_gives_the_same_result(seg: Segmenter, files: dict[str, Path]) -> None:
    path = files["img1"]  # 48 x 80 JPEG
    array = np.array(Image.open(path).convert("RGB"))
    forms = [
        str(path), path, Image.open(path), array, array.astype(np.float32) / 255,
        torch.from_numpy(array).permute(2, 0, 1), torch.from_numpy(array).permute(2, 0, 1).float() / 255,
    ]
    results = [seg(image, classes=CLASSES) for image in forms]
    for result in results:
        assert isinstance(result, SegmentationResult)
        assert result.panoptic.shape == (48, 80)
        assert np.array_equal(result.panoptic, results[0].panoptic)
        assert result.segments == results[0].segments
    gray = seg(array[..., 0], classes=CLASSES)  # (H, W) is read as gray
    assert gray.image.shape == (48, 80, 3)


def test_result_fields_agree_with_each_other(seg: Segmenter, files: dict[str, Path]) -> None:
    result = seg(files["img0"], classes=CLASSES)
    assert [result.vocabulary.names, result.vocabulary.is_thing] == [
        ("cat", "tv", "dog", "sky"), (True, True, True, False)  # things, then stuff
    ]
    assert result.vocabulary.synonyms[1] == ("tv", "monitor")
    ids, segments = result.panoptic, result.segments
    assert segments and ids.shape == (64, 64) and ids.dtype == np.int32
    assert sorted(s["id"] for s in segments) == sorted(set(np.unique(ids).tolist()) - {0})
    for s in segments:
        mask = ids == s["id"]
        ys, xs = np.nonzero(mask)
        assert s["area"] == mask.sum()
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert s["category"] in result.vocabulary.names
        assert s["isthing"] == (s["category"] != "sky")
        assert 0.0 <= s["score"] <= 1.0 and "caption" not in s
    assert result.semantic.shape == (64, 64) and result.semantic.max() < 4
    assert all(i["mask"].shape == (64, 64) and i["category"] != "sky" for i in result.instances)
    record, png = result.to_coco()
    assert record["file_name"] == "img0.png" and record["image_id"] == "img0"
    assert np.array_equal(rgb2id(np.asarray(png)), ids)
    assert result.overlay().size == (64, 64) and result.overlay(min_side=256).size == (256, 256)
    assert result.to_json()["segments"] == segments


def test_embeddings_are_decoder_queries_one_per_segment(seg: Segmenter, files: dict[str, Path]) -> None:
    with SegmenterTap(seg.model) as tap:
        result = seg(files["img0"], classes=CLASSES)
        queries = tap.captured().queries[0].numpy()  # (Q, C)
    assert result.embeddings.shape == (len(result.segments), 64)
    for row in result.embeddings:
        assert np.isclose(queries, row).all(1).any()


def test_a_list_is_batched_and_equals_single_calls(seg: Segmenter, files: dict[str, Path]) -> None:
    paths = [files["img0"], files["img2"]]  # both 64 x 64: the same canvas alone or together
    with mock.patch.object(seg.model, "predict", wraps=seg.model.predict) as predict:
        batched = seg(paths, classes=CLASSES, batch_size=2)
    assert predict.call_count == 1 and isinstance(batched, list) and len(batched) == 2
    for path, result in zip(paths, batched, strict=True):
        single = seg(path, classes=CLASSES)
        assert np.array_equal(single.panoptic, result.panoptic)
        assert [s["category"] for s in single.segments] == [s["category"] for s in result.segments]
    mixed = seg([files["img0"], files["img1"]], classes=CLASSES)
    assert [r.panoptic.shape for r in mixed] == [(64, 64), (48, 80)]


def test_text_work_is_cached_per_vocabulary(seg: Segmenter, files: dict[str, Path]) -> None:
    classes = ["ball", "stuff: grass, lawn"]
    with mock.patch.object(seg.model.prompts, "tokenize", wraps=seg.model.prompts.tokenize) as tokenize:
        seg(files["img0"], classes=classes)
        seg(files["img1"], classes=list(classes))
    assert tokenize.call_count == 1
    assert seg.vocabulary(classes) is seg.vocabulary(tuple(classes))


def test_thresholds_are_keyword_arguments(seg: Segmenter, files: dict[str, Path]) -> None:
    none = seg(files["img0"], classes=CLASSES, object_threshold=1.0)
    assert none.segments == [] and not none.panoptic.any() and none.embeddings.shape == (0, 64)
    assert len(seg(files["img0"], classes=CLASSES, top_k=3).instances) == 3


def test_tasks_left_out_are_not_computed(seg: Segmenter, files: dict[str, Path]) -> None:
    full = seg(files["img0"], classes=CLASSES)
    light = seg(files["img0"], classes=CLASSES, tasks=("panoptic",))
    assert np.array_equal(light.panoptic, full.panoptic) and light.segments == full.segments
    assert light.raw.instances is None and light.raw.semantic is None  # no full-size instance masks made
    with pytest.raises(ValueError, match="include 'instance' in tasks"):
        _ = light.instances
    with pytest.raises(ValueError, match="include 'semantic' in tasks"):
        _ = light.semantic
    labels = seg(files["img0"], classes=CLASSES, tasks=("semantic",))
    assert np.array_equal(labels.semantic, full.semantic) and labels.embeddings.shape == (0, 64)
    with pytest.raises(ValueError, match="choose any of"):
        seg(files["img0"], classes=CLASSES, tasks=("boxes",))


def test_mistakes_are_clear(seg: Segmenter, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one entry per class"):
        seg(files["img0"], classes="cat, dog")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names no class"):
        seg(files["img0"], classes=["", " # none"])
    with pytest.raises(FileNotFoundError, match="not found"):
        seg(tmp_path / "missing.jpg", classes=CLASSES)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        seg(np.zeros((4, 4, 5), np.uint8), classes=CLASSES)
    with pytest.raises(ValueError, match="float in"):
        seg(np.full((4, 4, 3), 7.0), classes=CLASSES)
    with pytest.raises(ValueError, match="Cannot segment a dict"):
        seg({}, classes=CLASSES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one name per image"):
        seg([files["img0"]], classes=CLASSES, names=["a.png", "b.png"])
    with pytest.raises(ValueError, match="needs a captioner"):
        seg.caption(files["img0"], CLASSES, points=[[1, 1]])
    bare = tmp_path / "bare.ckpt"
    torch.save({"omtseg_format": 1, "state_dict": {}}, bare)
    with pytest.raises(ValueError, match="no saved model config"):
        Segmenter.from_checkpoint(bare)


def test_the_default_image_size_is_the_one_the_checkpoint_records(tmp_path: Path) -> None:
    recorded = make_checkpoint(tmp_path / "recorded.ckpt", eval_size=IMAGE_SIZE)
    assert Segmenter.from_checkpoint(recorded).transform.size == IMAGE_SIZE
    assert Segmenter.from_checkpoint(recorded, image_size=None).transform.size is None  # as asked
    assert Segmenter.from_checkpoint(recorded, image_size=32).transform.size == 32
    older = make_checkpoint(tmp_path / "older.ckpt")  # written before the size was recorded
    assert Segmenter.from_checkpoint(older).transform.size == 640


def test_a_captioner_describes_segments_and_regions(files: dict[str, Path]) -> None:
    seg = Segmenter.from_checkpoint(
        files["ckpt"], captioner=files["captioner"], image_size=IMAGE_SIZE, caption_max_tokens=4
    )
    result = seg(files["img0"], classes=CLASSES)
    assert result.segments and all(set(s["caption"].split()) <= set(CAPTION_WORDS) for s in result.segments)
    assert all("caption" not in s for s in seg(files["img0"], classes=CLASSES, captions=False).segments)
    region = np.zeros((64, 64), bool)
    region[10:30, 5:40] = True
    prompts = {"boxes": [[5, 10, 40, 30], [0, 0, 8, 8]], "points": [[20, 20], [60, 3]], "masks": region[None]}
    passes = []
    hook = seg.model.register_forward_hook(lambda *_: passes.append(1))
    try:
        captioned = seg.caption(files["img0"], CLASSES, **prompts)
    finally:
        hook.remove()
    assert len(passes) == 1  # five prompts, one segmenter pass
    texts = captioned.captions
    assert len(texts) == 5 and all(t and set(t.split()) <= set(CAPTION_WORDS) for t in texts)
    assert [r.prompt for r in captioned.regions] == ["box", "box", "point", "point", "mask"]
    assert np.array_equal(captioned.regions[4].mask.numpy(), region)
    record = captioned.to_json()
    assert (record["height"], record["width"], len(record["regions"])) == (64, 64, 5)
    assert record["regions"][1]["value"] == [0.0, 0.0, 8.0, 8.0]
    picture = captioned.overlay()
    assert picture.size == (512, 512) and np.asarray(picture).std() > 0
    # No prompts: every segment, with the captions __call__ gives them; default classes: COCO's 133.
    everything = seg.caption(files["img0"], CLASSES)
    assert everything.captions == [s["caption"] for s in result.segments]
    assert len(seg.caption(files["img0"], points=[[20, 20]]).segmentation.vocabulary) == 133
