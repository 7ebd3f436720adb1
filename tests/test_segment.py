"""`omtseg segment`: good files written, bad ones named with a reason, and the same results as the Python API
and `omtseg predict` for the same checkpoint, images and classes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from _tiny_segmenter import IMAGE_SIZE, RECIPE, make_checkpoint, make_images
from PIL import Image

from omtseg import Segmenter
from omtseg.cli import main as cli_main
from omtseg.cli import run_command
from omtseg.commands import segment
from omtseg.io import read_panoptic_png

CLASSES = ["cat", "stuff: sky", "tv, monitor", "dog"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("segment") / "tiny.ckpt")


def _segment(*args: str) -> int:
    code = run_command(["segment", *args, "--image-size", str(IMAGE_SIZE), "--quiet"])
    assert code is not None
    return code


def test_good_files_are_written_and_bad_ones_named(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    good = make_images(folder, count=3)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "cut.jpg").write_bytes(good[1].read_bytes()[:200])  # a truncated JPEG
    (folder / ".hidden.png").write_bytes(b"")  # hidden files are not inputs
    out = tmp_path / "out"
    (out / "panoptic.json").parent.mkdir()
    (out / "panoptic.json").write_text("{}")  # a previous run's, replaced

    unwritten = AssertionError("instances are not written, so not computed")
    with mock.patch("omtseg.modeling.postprocess.instance_inference", side_effect=unwritten):
        code = _segment(str(folder), str(tmp_path / "missing.png"), "--ckpt", str(ckpt), "--classes",
                        *CLASSES, "--out", str(out))  # fmt: skip

    assert code == 1
    printed = capsys.readouterr().out
    assert "Segmented 3 of 7 files" in printed
    for name, reason in [("empty.jpg", "empty file"), ("notes.txt", "not an image"),
                         ("cut.jpg", "corrupt or truncated"), ("missing.png", "not found")]:
        assert any(name in line and reason in line for line in printed.splitlines()), (name, printed)
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in panoptic["annotations"]) == ["img0.png", "img1.png", "img2.png"]
    assert [c["name"] for c in panoptic["categories"]] == ["cat", "tv", "dog", "sky"]  # things, then stuff
    for path in good:
        png = path.with_suffix(".png").name
        size = Image.open(path).size
        assert Image.open(out / "panoptic" / png).size == size
        assert Image.open(out / "semantic" / png).size == size
        assert min(Image.open(out / "overlays" / png).size) >= segment.OVERLAY_MIN_SIDE
    lines = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert len(lines) == 7
    errors = {Path(r["file"]).name: r["error"] for r in lines if "error" in r}
    assert sorted(errors) == ["cut.jpg", "empty.jpg", "missing.png", "notes.txt"]
    written = [r for r in lines if "segments" in r]
    assert all(r["segments"] and {s["category"] for s in r["segments"]} <= {"cat", "tv", "dog", "sky"}
               for r in written)
    assert not list(out.rglob("*.tmp*"))


def test_an_interrupted_run_leaves_no_panoptic_json(ckpt: Path, tmp_path: Path) -> None:
    make_images(tmp_path / "photos", count=2)
    out = tmp_path / "out"
    calls = {"n": 0}
    real = Segmenter.segment_samples

    def interrupt_second(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    with mock.patch.object(Segmenter, "segment_samples", interrupt_second), pytest.raises(KeyboardInterrupt):
        _segment(str(tmp_path / "photos"), "--ckpt", str(ckpt), "--classes", "cat", "--out", str(out))
    assert not (out / "panoptic.json").exists()
    (line,) = (out / "segments.jsonl").read_text().splitlines()  # the first image, whole
    assert json.loads(line)["file_name"] == "img0.png"


def test_user_mistakes_are_one_line_and_exit_status_2(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_images(tmp_path / "a", count=1)
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "img0.jpg")  # writes img0.png too
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(ckpt)
    cases = [
        ([a, "--ckpt", str(tmp_path / "no.ckpt"), "--classes", "cat"], "Checkpoint not found"),
        ([a, "--ckpt", c, "--classes", " ", "#x"], "names no class"),
        ([a, "--ckpt", c, "--vocabulary", str(tmp_path / "v.txt")], "not found"),
        ([a, b, "--ckpt", c, "--classes", "cat"], "would both write"),
    ]
    for args, message in cases:
        assert _segment(*args, "--out", str(tmp_path / "out")) == 2
        err = capsys.readouterr().err
        assert err.startswith("omtseg segment: error:") and message in err and len(err.splitlines()) == 1


def test_api_segment_and_predict_give_identical_results(ckpt: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    paths = make_images(images, count=3)
    vocab = tmp_path / "classes.txt"
    vocab.write_text("\n".join(CLASSES) + "\n")
    # One batch of all three images everywhere (the recipe predicts in batches of 10).
    seg_out, pred_out = tmp_path / "segment", tmp_path / "predict"
    assert _segment(str(images), "--ckpt", str(ckpt), "--vocabulary", str(vocab), "--out", str(seg_out),
                    "--batch-size", "3") == 0
    with mock.patch.object(sys, "argv", ["omtseg"]):
        cli_main([
            "predict", *RECIPE, "--ckpt_path", str(ckpt),
            "--data.init_args.root", str(tmp_path / "data"),
            *[a for s in ("train", "val", "test") for a in (f"--data.init_args.synthetic.num_{s}", "0")],
            "--data.init_args.predict_image_dir", str(images),
            "--vocabulary_file", str(vocab),
            "--prediction_writer.output_dir", str(pred_out),
            "--prediction_writer.image_dir", str(images),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"),
        ])
    api = Segmenter.from_checkpoint(ckpt, image_size=IMAGE_SIZE, batch_size=3)(paths, classes=CLASSES)

    panoptic = json.loads((seg_out / "panoptic.json").read_text())
    assert panoptic == json.loads((pred_out / "panoptic.json").read_text())
    records = {a["file_name"]: a for a in panoptic["annotations"]}
    assert sum(len(r["segments_info"]) for r in records.values()) > 0
    for path, result in zip(paths, api, strict=True):
        png = path.with_suffix(".png").name
        for folder in ("panoptic", "semantic", "overlays"):
            a = np.asarray(Image.open(seg_out / folder / png))
            assert np.array_equal(a, np.asarray(Image.open(pred_out / folder / png))), (folder, png)
        assert np.array_equal(result.panoptic, read_panoptic_png(seg_out / "panoptic" / png))
        assert np.array_equal(result.semantic + 1, np.asarray(Image.open(seg_out / "semantic" / png)))
        assert result.to_coco()[0] == records[png]
