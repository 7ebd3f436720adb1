"""ONNX export (`omtseg export`, omtseg.deploy): the file passes onnx.checker, ONNX Runtime matches PyTorch
eager (the independent reference) on other vocabularies and batch sizes than the export's, `omtseg segment
--onnx` writes the same files as `--ckpt`, the separate-text ablation stores its text, and mistakes are one
clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _tiny_segmenter import IMAGE_SIZE, make_checkpoint, make_images

from omtseg import Segmenter
from omtseg.cli import run_command
from omtseg.data.vocabulary import class_list_vocabulary
from omtseg.deploy.export import OPSET, export_onnx
from omtseg.deploy.graph import graph_text_inputs
from omtseg.deploy.runtime import OnnxSegmenter
from omtseg.modeling.segmenter import OMTSeg

CLASSES = ["cat", "stuff: sky", "tv, monitor", "dog"]
TOL = 1e-4  # max abs difference ONNX Runtime vs PyTorch eager (measured: about 3e-6)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(folder / "tiny.ckpt")
    onnx_file = folder / "tiny.onnx"
    code = run_command(["export", "--ckpt", str(ckpt), "--classes", *CLASSES, "--out", str(onnx_file),
                        "--image-size", str(IMAGE_SIZE), str(IMAGE_SIZE)])  # fmt: skip
    assert code == 0
    return {"ckpt": ckpt, "onnx": onnx_file, "images": folder / "images"}


def test_file_is_checked_and_describes_itself(files: dict[str, Path]) -> None:
    model = onnx.load(str(files["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert [i.name for i in model.graph.input] == [
        "images", "text_ids", "text_positions", "text_entry", "wls_index", "class_members"
    ]  # the demo recipe prompts per name, so the graph also reads each token's entry
    outputs = ["class_logits", "objectness_logits", "mask_logits", "queries"]
    assert [o.name for o in model.graph.output] == outputs
    runtime = OnnxSegmenter(files["onnx"])
    assert runtime.image_hw == (IMAGE_SIZE, IMAGE_SIZE) and runtime.text_attention == "one_way"
    assert (runtime.object_threshold, runtime.overlap_threshold) == (0.0, 0.0)  # the checkpoint's


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_eager_on_another_vocabulary(files: dict[str, Path], batch: int) -> None:
    model = Segmenter.from_checkpoint(files["ckpt"], image_size=IMAGE_SIZE).model
    runtime = OnnxSegmenter(files["onnx"], threads=1)
    # More classes, other names and synonyms than the export's: the vocabulary is a graph input.
    vocabulary = class_list_vocabulary(["bird", "car, automobile", "person"], ["road", "grass, lawn"])
    seed = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), generator=seed)
    with torch.no_grad():
        want = model(images, vocabulary)
    got = runtime.run(images.float().numpy(), vocabulary)
    assert got["class_logits"].shape == (batch, 16, 5)
    for name in ("class_logits", "objectness_logits", "mask_logits"):
        assert np.abs(got[name] - getattr(want, name).numpy()).max() < TOL, name
    assert np.abs(got["mask_logits"]).max() > 1e-2  # not a degenerate output that matches trivially


def test_segment_onnx_writes_the_files_of_segment_ckpt(files: dict[str, Path], tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", count=3)  # 64x64 and 48x80: both pad to the 64x64 canvas
    outputs = {}
    for kind in ("ckpt", "onnx"):
        out = tmp_path / kind
        args = [f"--{kind}", str(files[kind]), "--classes", *CLASSES, "--out", str(out)]
        code = run_command(["segment", *map(str, images), *args, "--image-size", str(IMAGE_SIZE), "--quiet"])
        assert code == 0
        outputs[kind] = out
    torch_json = json.loads((outputs["ckpt"] / "panoptic.json").read_text())
    assert torch_json == json.loads((outputs["onnx"] / "panoptic.json").read_text())
    assert sum(len(a["segments_info"]) for a in torch_json["annotations"]) >= 3
    for sub in ("panoptic", "semantic", "overlays"):
        for png in sorted((outputs["ckpt"] / sub).iterdir()):
            assert png.read_bytes() == (outputs["onnx"] / sub / png.name).read_bytes(), (sub, png.name)
    lines = [(outputs[k] / "segments.jsonl").read_text().splitlines() for k in ("ckpt", "onnx")]
    for want, got in zip(*lines, strict=True):
        want_segments, got_segments = json.loads(want).pop("segments"), json.loads(got).pop("segments")
        assert json.loads(want) | {"segments": 0} == json.loads(got) | {"segments": 0}
        # Scores are printed to 6 decimals: float rounding (about 1e-6) may move the last one.
        scores = [s.pop("score") for s in got_segments]
        assert [s.pop("score") for s in want_segments] == pytest.approx(scores, abs=2e-6)
        assert want_segments == got_segments


def test_from_onnx_gives_the_api_results(files: dict[str, Path], tmp_path: Path) -> None:
    image = make_images(tmp_path, count=2)[1]
    eager = Segmenter.from_checkpoint(files["ckpt"], image_size=IMAGE_SIZE)(image, classes=CLASSES)
    exported = Segmenter.from_onnx(files["onnx"])(image, classes=CLASSES)
    assert not isinstance(eager, list) and not isinstance(exported, list)
    assert np.array_equal(exported.panoptic, eager.panoptic) and exported.segments == eager.segments
    assert np.abs(exported.embeddings - eager.embeddings).max() < TOL
    with pytest.raises(ValueError, match="captioner"):
        Segmenter.from_onnx(files["onnx"]).caption(image, CLASSES, points=[(1, 1)])


def test_separate_text_model_stores_its_vocabulary(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = OMTSeg(backbone="tiny", img_size=64, cross_modal=False, adapter_channels=32, conv_dim=32,
                   mask_dim=32, num_pixel_decoder_layers=1, hidden_dim=32, num_queries=8,
                   num_decoder_layers=1, num_heads=4, decoder_feedforward=64,
                   pixel_decoder_feedforward=64)  # fmt: skip
    vocabulary = class_list_vocabulary(["cat", "dog, puppy"], ["sky"])
    report = export_onnx(model, tmp_path / "text.onnx", vocabulary=vocabulary, image_hw=(64, 96))
    assert report.input_names == ["images"]  # the text features are in the file
    assert max(report.max_abs_diff.values()) < TOL
    runtime = OnnxSegmenter(report.path)
    images = torch.randint(0, 256, (2, 3, 64, 96)).float()
    with torch.no_grad():
        want = model(images, vocabulary)
    got = runtime.run(images.numpy(), vocabulary)
    assert np.abs(got["class_logits"] - want.class_logits.numpy()).max() < TOL
    with pytest.raises(ValueError, match="export again with yours"):
        runtime.run(images.numpy(), class_list_vocabulary(["cat"], []))


def test_mistakes_are_one_clear_error(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_command(["export", "--ckpt", str(files["ckpt"]), "--classes", "cat", "--out",
                        str(tmp_path / "x.onnx"), "--dynamic"])  # fmt: skip
    assert code == 2 and "fixed image size" in capsys.readouterr().err
    code = run_command(["export", "--ckpt", str(files["ckpt"]), "--classes", "cat", "--out",
                        str(tmp_path / "x.onnx"), "--image-size", "60", "64"])  # fmt: skip
    assert code == 2 and "multiples of 32" in capsys.readouterr().err
    runtime = OnnxSegmenter(files["onnx"])
    with pytest.raises(ValueError, match="do not fit"):
        runtime.pad(np.zeros((1, 3, 96, 64), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        OnnxSegmenter(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="device"):
        OnnxSegmenter(files["onnx"], device="tpu")
    with pytest.raises(ValueError, match="prompt chunks"):
        graph_text_inputs(class_list_vocabulary([f"class {i}" for i in range(200)], []), max_text_tokens=64)


def test_calibration_travels_with_the_file(files: dict[str, Path], tmp_path: Path) -> None:
    model = Segmenter.from_checkpoint(files["ckpt"], image_size=IMAGE_SIZE).model
    vocabulary = class_list_vocabulary(["cat", "bird", "dog"], ["sky"])
    model.trained_names = frozenset({"cat", "bird", "sky"})
    model.seen_class_penalty = 1e4  # larger than any logit gap: only "dog" (index 2) can win a pixel
    path = tmp_path / "calibrated.onnx"
    export_onnx(model, path, vocabulary=vocabulary, image_hw=(IMAGE_SIZE, IMAGE_SIZE))
    runtime = OnnxSegmenter(path, threads=1)
    assert runtime.trained_names == model.trained_names and runtime.seen_class_penalty == 1e4
    seg = Segmenter.from_onnx(path, image_size=IMAGE_SIZE)
    image = make_images(tmp_path / "photos", count=1)[0]
    got = seg(image, ["cat", "bird", "dog", "stuff: sky"])
    assert set(np.unique(got.semantic).tolist()) == {2}
    plain = seg(image, ["cat", "bird", "dog", "stuff: sky"], seen_class_penalty=0.0)
    # The call's override reaches the runtime: without the penalty, the checkpoint's own labels.
    torch_seg = Segmenter.from_checkpoint(files["ckpt"], image_size=IMAGE_SIZE)
    want = torch_seg(image, ["cat", "bird", "dog", "stuff: sky"])
    assert np.array_equal(plain.semantic, want.semantic)
    assert set(np.unique(want.semantic).tolist()) != {2}  # so the penalised result is the penalty's doing
    # An exported model that records no training names refuses a penalty instead of ignoring it.
    with pytest.raises(ValueError, match="records none"):
        Segmenter.from_onnx(files["onnx"], image_size=IMAGE_SIZE)(image, CLASSES, seen_class_penalty=1.0)
