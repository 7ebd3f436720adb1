"""Speed of the Python API (``omtseg.Segmenter``) on the demo model: images/s at batch 1 and batch 8.

The model is the demo's tiny model (configs/model/omtseg_tiny.yaml, which configs/demo.yaml and the world
recipe of `make demo` both use; built by the CLI's own builder, random weights run as fast as trained ones)
segmenting 64 px images, the demo's size, with the synthetic dataset's 11 classes. Timed:
the whole call as users make it, ``seg(images, classes=..., batch_size=b)`` and reading every result's
``segments`` (image conversion, transform, collate, forward, post-processing of all three tasks, per-segment
embeddings). The vocabulary's text work is cached after the first call; that first call is reported apart.

Run: ``python -m benchmarks.api_speed --out outputs/bench/api_speed [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.train_infer import build_demo
from omtseg.api import Segmenter
from omtseg.data.synthetic import synthetic_vocabulary
from omtseg.data.vocabulary import class_entries
from omtseg.io import save_json

BATCH_SIZES = (1, 8)
IMAGE_SIZE = 64  # the demo recipe's eval_size and image side


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(count)]


def _timed(seg: Segmenter, images: list[np.ndarray], classes: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    results = seg(images, classes=classes, batch_size=batch_size)
    assert isinstance(results, list)
    for result in results:
        result.segments  # noqa: B018 (computed on access: part of what a user pays)
    return time.perf_counter() - start


def run(out_dir: str | Path, *, quick: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_images, repeats = (16, 2) if quick else (32, 5)
    module, _ = build_demo(out)
    seg = Segmenter(module.model, device="cpu", image_size=IMAGE_SIZE)
    classes = class_entries(synthetic_vocabulary())
    images = _images(num_images)
    first = _timed(seg, images[:1], classes, 1)  # tokenises the vocabulary (cached from here on)
    result: dict[str, Any] = {
        "images": num_images,
        "image_size": IMAGE_SIZE,
        "classes": len(classes),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "first_call_s": first,
    }
    for batch_size in BATCH_SIZES:
        _timed(seg, images[:batch_size], classes, batch_size)  # warm-up at this batch size
        seconds = [_timed(seg, images, classes, batch_size) for _ in range(repeats)]
        median = statistics.median(seconds)
        result[f"batch_{batch_size}"] = {
            "images_per_s": num_images / median,
            "ms_per_image": 1000 * median / num_images,
            "seconds": seconds,
        }
    save_json(result, out / "api_speed.json", indent=2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/api_speed")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.out, quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
