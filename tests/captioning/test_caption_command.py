"""``omtseg caption``: prompts on the command line -> one caption each, JSON and an overlay."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from _tiny_segmenter import CAPTION_WORDS, IMAGE_SIZE, make_captioner, make_checkpoint, make_images
from PIL import Image

from omtseg.cli import run_command


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("caption")
    (image,) = make_images(folder / "images", count=1)  # 64 x 64
    ckpt = make_checkpoint(folder / "demo.ckpt")  # the demo recipe's model (configs/demo.yaml)
    return {"image": image, "ckpt": ckpt, "captioner": make_captioner(folder)}


def _caption(files: dict[str, Path], *args: str) -> int | None:
    """``omtseg caption IMAGE --ckpt ... --captioner ... ARGS`` through the command table; its exit status."""
    with mock.patch.object(sys, "argv", ["omtseg"]):
        return run_command(["caption", str(files["image"]), "--ckpt", str(files["ckpt"]),
                            "--captioner", str(files["captioner"]), "--image-size", str(IMAGE_SIZE),
                            "--max-tokens", "4", *args])  # fmt: skip


def test_three_boxes_and_two_points_give_five_captions(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _caption(
        files, "--boxes", "0,0,32,32", "10,5,60,40", "30.5,30.5,63,63", "--points", "5,5", "50,20",
        "--classes", "cat", "stuff: sky", "--out", str(tmp_path),
    )  # fmt: skip
    assert status == 0
    record = json.loads((tmp_path / "img0.captions.json").read_text())
    regions = record["regions"]
    assert [r["prompt"] for r in regions] == ["box"] * 3 + ["point"] * 2
    assert all(r["caption"] and set(r["caption"].split()) <= set(CAPTION_WORDS) for r in regions)
    assert regions[2]["value"] == [30.5, 30.5, 63.0, 63.0] and regions[4]["value"] == [50.0, 20.0]
    overlay = Image.open(tmp_path / "img0.overlay.png")
    assert overlay.size == (512, 512)  # enlarged so the captions stay readable
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and printed[-1].startswith("5 captions")


def test_a_mask_file_is_captioned_as_its_region(files: dict[str, Path], tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[40:60, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert _caption(files, "--masks", str(tmp_path / "mask.png"), "--out", str(tmp_path)) == 0
    (region,) = json.loads((tmp_path / "img0.captions.json").read_text())["regions"]
    assert (region["prompt"], region["area"]) == ("mask", 400)
    assert region["mask_file"] == str(tmp_path / "mask.png")
    assert region["bbox"] == [10, 40, 20, 20] and region["caption"]


def test_without_prompts_every_segment_is_captioned(files: dict[str, Path], tmp_path: Path) -> None:
    assert _caption(files, "--out", str(tmp_path)) == 0  # default classes: COCO's 133
    regions = json.loads((tmp_path / "img0.captions.json").read_text())["regions"]
    assert regions and all(r["prompt"] == "segment" and r["segment_id"] for r in regions)


def test_a_bad_prompt_is_one_line_and_status_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _caption(files, "--boxes", "1,2,3", "--out", str(tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert "x0,y0,x1,y1" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "img0.overlay.png").exists()
