"""ONNX Runtime vs PyTorch eager on the CPU: time per image, export time, file size, and parity.

Two settings of the demo's tiny model (configs/model/omtseg_tiny.yaml): the demo model at its 64 px, and the
same model on 640 px images. The demo model is the checkpoint ``make demo`` trains
(``outputs/demo/train/checkpoints/best-step=800.ckpt``, or ``--demo-ckpt``) when it exists, else the recipe
with random weights (same speed; parity is then on random weights). Each is exported with ``export_onnx``
(timed; file size reported), then timed on one image at a time (batch 1), the network only: ``OMTSeg.forward``
under ``torch.no_grad`` against ``InferenceSession.run``, both on the same number of threads, repeats
interleaved (eager, ONNX Runtime, eager, ...) so that machine noise hits both alike; medians are reported.

Parity: max |ONNX Runtime - eager| of class and mask logits over the timed images, and, with the trained
checkpoint, the panoptic results of ``Segmenter.from_checkpoint`` and ``Segmenter.from_onnx`` on the demo's
test images (``data/world/images/test`` with ``categories_test.json``, as ``make demo`` tests): the images
whose panoptic id maps and segments (ids, classes, areas, boxes) are identical, and the largest difference
of a segment's score (a probability; logits differ by float rounding, about 1e-4 on the trained model).

Run: ``python -m benchmarks.onnx_speed --out outputs/bench/onnx_speed [--quick] [--demo-ckpt PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.train_infer import build_demo
from omtseg.api import Segmenter
from omtseg.data.synthetic import synthetic_vocabulary
from omtseg.data.vocabulary import class_entries, read_categories_json
from omtseg.deploy.export import export_onnx
from omtseg.deploy.graph import OUTPUTS, graph_text_inputs
from omtseg.io import save_json
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Vocabulary

REPO = Path(__file__).resolve().parents[1]
DEMO_CKPT = REPO / "outputs" / "demo" / "train" / "checkpoints" / "best-step=800.ckpt"
WORLD = REPO / "data" / "world"
SIZES = {"demo_64px": 64, "tiny_640px": 640}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def compare_speed(
    model: OMTSeg, vocabulary: Vocabulary, size: int, out: Path, *, repeats: int, num_images: int
) -> dict[str, Any]:
    """Export ``model`` at ``size`` x ``size`` and time eager vs ONNX Runtime on ``num_images`` images."""
    report = export_onnx(model, out / f"model_{size}.onnx", vocabulary=vocabulary, image_hw=(size, size))
    threads = torch.get_num_threads()
    session = _session(report.path, threads)
    text = graph_text_inputs(
        vocabulary, text_attention=model.text_attention, max_text_tokens=model.prompts.max_text_tokens
    )
    feeds_text = {i.name: text[i.name] for i in session.get_inputs() if i.name != "images"}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, 3, size, size)).astype(np.float32) for _ in range(num_images)]
    diffs = {"class_logits": 0.0, "mask_logits": 0.0}

    def eager() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for image in images:
                model(torch.from_numpy(image), vocabulary)
        return (time.perf_counter() - start) / num_images

    def onnx() -> float:
        start = time.perf_counter()
        for image in images:
            session.run(list(OUTPUTS), {"images": image, **feeds_text})
        return (time.perf_counter() - start) / num_images

    for image in images:  # parity, and a warm-up of both
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": image, **feeds_text}), strict=True))
        with torch.no_grad():
            want = model(torch.from_numpy(image), vocabulary)
        for name in diffs:
            diffs[name] = max(diffs[name], float(np.abs(got[name] - getattr(want, name).numpy()).max()))
    seconds: dict[str, list[float]] = {"eager": [], "onnxruntime": []}
    for _ in range(repeats):
        seconds["eager"].append(eager())
        seconds["onnxruntime"].append(onnx())
    eager_ms = 1000 * statistics.median(seconds["eager"])
    ort_ms = 1000 * statistics.median(seconds["onnxruntime"])
    return {
        "image_size": size,
        "classes": len(vocabulary),
        "images": num_images,
        "repeats": repeats,
        "threads": threads,
        "eager_ms_per_image": eager_ms,
        "onnxruntime_ms_per_image": ort_ms,
        "speedup": eager_ms / ort_ms,
        "seconds_per_image": seconds,
        "export_s": report.seconds,
        "file_mib": report.file_bytes / 2**20,
        "opset": report.opset,
        "max_abs_diff": diffs,
        "export_check_max_abs_diff": report.max_abs_diff,
    }


def panoptic_parity(
    ckpt: Path, onnx_file: Path, images: list[Path], vocabulary: Vocabulary
) -> dict[str, Any]:
    """Segment ``images`` with the checkpoint and with its export: how many results are identical."""
    classes = class_entries(vocabulary)
    eager = Segmenter.from_checkpoint(ckpt, image_size=64, batch_size=10)(images, classes=classes)
    exported = Segmenter.from_onnx(onnx_file, batch_size=10)(images, classes=classes)
    assert isinstance(eager, list) and isinstance(exported, list)
    same, segments, score_diff = 0, 0, 0.0
    for a, b in zip(eager, exported, strict=True):
        sa, sb = a.segments, b.segments
        scores = [(x.pop("score"), y.pop("score")) for x, y in zip(sa, sb, strict=False)]
        score_diff = max([score_diff, *(abs(x - y) for x, y in scores)])
        same += int(np.array_equal(a.panoptic, b.panoptic) and sa == sb)
        segments += len(sa)
    return {"images": len(images), "identical": same, "segments": segments, "max_score_diff": score_diff}


def run(
    out_dir: str | Path, *, quick: bool = False, demo_ckpt: Path = DEMO_CKPT, world: Path = WORLD
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repeats, num_images = (3, 2) if quick else (7, 5)
    trained = demo_ckpt.is_file()
    if trained:
        demo = Segmenter.from_checkpoint(demo_ckpt).model
        vocabulary = read_categories_json(world / "categories_test.json")
    else:
        demo = build_demo(out)[0].model
        vocabulary = synthetic_vocabulary()
    result: dict[str, Any] = {"demo_checkpoint": str(demo_ckpt) if trained else "random weights (recipe)"}
    for name, size in SIZES.items():
        result[name] = compare_speed(
            demo, vocabulary, size, out, repeats=repeats, num_images=num_images if size < 640 else 1
        )
    if trained:
        images = sorted((world / "images" / "test").glob("*.png"))[: 20 if quick else None]
        result["demo_test_panoptic"] = panoptic_parity(demo_ckpt, out / "model_64.onnx", images, vocabulary)
    save_json(result, out / "onnx_speed.json", indent=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/onnx_speed")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--demo-ckpt", type=Path, default=DEMO_CKPT, help="the checkpoint of `make demo`")
    parser.add_argument("--world", type=Path, default=WORLD, help="the world's data root of `make demo`")
    args = parser.parse_args()
    result = run(args.out, quick=args.quick, demo_ckpt=args.demo_ckpt, world=args.world)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
