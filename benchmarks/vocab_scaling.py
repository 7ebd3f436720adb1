"""Inference cost per image against vocabulary size: the five zero-shot vocabularies (20 ... 847 classes).

The tiny model of ``configs/model/omtseg_tiny.yaml`` (random weights: cost does not depend on them) segments
one 640 x 640 image on CPU, prompted with the real class lists of Pascal VOC-20, Pascal Context-59,
ADE20K-150, Pascal Context-459 and ADE20K-847 (synonyms included, so P prompt entries >= K classes), in two
modes:

- ``joint`` (the paper, ``cross_modal=True``): every prompt chunk runs through BEiT-3 together with the image,
  so the cost grows with the number of chunks C (about tokens / 254 at ``max_text_tokens=256``);
- ``separate`` (``cross_modal=False``): the image runs once and the text features, image independent, are
  computed on the first call and cached, so later images cost one image pass whatever the vocabulary.

Per configuration: the first forward (tokenisation and, when separate, the text passes included), the
median steady-state forward, and one steady-state ``OMTSeg.predict`` with semantic post-processing (the
mIoU path: per-class scores at the original size, a (K, H, W) float tensor). At 640 px a joint pass of even
the tiny model takes seconds on CPU and ADE20K-847 needs 19 of them per image, so repeats are few.

Times are wall seconds (``*_s``) and process CPU seconds over all threads (``*_cpu_s``,
``time.process_time``): on a shared machine the CPU seconds are the stable figure, so the plot shows them.

Peak memory is the growth of the process's maximum resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, Linux KiB) over the model and input already in memory, each
configuration in a fresh subprocess: ``peak_forward_mib`` after the first forward, ``peak_predict_mib``
after the predict (max RSS only grows, so it is the larger).

Outputs: ``vocab_scaling.json`` and ``vocab_scaling.png`` (time and memory against K, log-scaled K axis).
Run: ``python -m benchmarks.vocab_scaling --out outputs/bench/vocab_scaling [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw

from omtseg.data.benchmark_registry import zero_shot_vocabulary
from omtseg.io import atomic_path, save_json
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "model" / "omtseg_tiny.yaml"
BENCHMARKS = ("pascal_voc_20", "pascal_context_59", "ade20k_150", "pascal_context_459", "ade20k_847")
MODES = ("joint", "separate")
IMAGE_SIZE = 640


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(fn: Any, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(benchmark: str, mode: str, image_size: int = IMAGE_SIZE, repeats: int = 2) -> dict[str, Any]:
    """One configuration, in this process (run it in a fresh one for the memory figures)."""
    torch.manual_seed(0)
    config = yaml.safe_load(TINY_CONFIG.read_text())["model"]["init_args"]
    model = OMTSeg(**{**config, "cross_modal": mode == "joint"}).eval()
    vocabulary = zero_shot_vocabulary(benchmark)
    chunks = model.prompts.tokenize(vocabulary)
    image = torch.randint(0, 256, (1, 3, image_size, image_size), dtype=torch.uint8)
    size = (image_size, image_size)
    batch = Batch(
        images=image,
        padding_mask=torch.zeros((1, image_size, image_size), dtype=torch.bool),
        targets=None,
        infos=[ImageInfo(image_id=0, file_name="random.jpg", orig_size=size, resized_size=size)],
        vocabulary=vocabulary,
    )
    with torch.inference_mode():
        base = _max_rss_mib()
        first_forward, first_forward_cpu = _timed(lambda: model(image, vocabulary), 1)
        peak_forward = _max_rss_mib() - base
        forward, forward_cpu = _timed(lambda: model(image, vocabulary), repeats)
        # Prompts (and separate-mode text features) are cached by now: one predict is a steady-state one.
        predict, predict_cpu = _timed(lambda: model.predict(batch, tasks=("semantic",)), 1)
        peak_predict = _max_rss_mib() - base
    return {
        "classes": len(vocabulary),
        "prompt_entries": sum(len(c.prompt_class) for c in chunks),
        "text_tokens": sum(len(c.text_ids) for c in chunks),
        "chunks": len(chunks),
        "first_forward_s": first_forward,
        "forward_s": forward,
        "predict_s": predict,
        "first_forward_cpu_s": first_forward_cpu,
        "forward_cpu_s": forward_cpu,
        "predict_cpu_s": predict_cpu,
        "peak_forward_mib": peak_forward,
        "peak_predict_mib": peak_predict,
        "threads": torch.get_num_threads(),
    }


def _in_subprocess(benchmark: str, mode: str, image_size: int, repeats: int) -> dict[str, Any]:
    code = (
        "import json; from benchmarks.vocab_scaling import measure; "
        f"print(json.dumps(measure({benchmark!r}, {mode!r}, {image_size}, {repeats})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{benchmark}/{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


COLORS = {"joint": (40, 90, 180), "separate": (220, 120, 30)}


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[int, float]]],
) -> None:
    """One panel: a line per mode through (K, value) points, K on a log axis, values from 0."""
    x0, y0, x1, y1 = box
    ks = sorted({k for points in series.values() for k, _ in points})
    vmax = max(v for points in series.values() for _, v in points) or 1.0
    lo, span = math.log(ks[0]), max(math.log(ks[-1] / ks[0]), 1e-9)

    def px(k: float, v: float) -> tuple[int, int]:
        return int(x0 + (math.log(k) - lo) / span * (x1 - x0)), int(y1 - v / (1.1 * vmax) * (y1 - y0))

    draw.text((x0, 10), title, fill="black")
    draw.line([x0, y0, x0, y1, x1, y1], fill="black")
    for k in ks:
        x, _ = px(k, 0)
        draw.line([x, y1, x, y1 + 4], fill="black")
        draw.text((x - 8, y1 + 6), str(k), fill="black")
    draw.text(((x0 + x1) // 2 - 40, y1 + 20), "classes K (log)", fill="black")
    for frac in (0.0, 0.5, 1.0):
        _, y = px(ks[0], vmax * frac)
        draw.text((x0 - 56, y - 6), f"{vmax * frac:.3g}", fill="black")
    for n, (mode, points) in enumerate(series.items()):
        color = COLORS.get(mode, (0, 0, 0))
        coords = [px(k, v) for k, v in points]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=2)
        for x, y in coords:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((x0 + 10, y0 + 4 + 14 * n), mode, fill=color)


def line_plot(
    path: str | Path, results: dict[str, dict[str, dict[str, Any]]], panels: Sequence[tuple[str, str]]
) -> None:
    """Side-by-side panels of ``results[mode][benchmark][key]`` against the class count K, PIL only.

    Args:
        path: PNG to write.
        results: mode -> benchmark -> measured figures (with ``classes``).
        panels: (key, title) per panel.
    """
    pw, ph = 460, 340
    image = Image.new("RGB", (pw * len(panels), ph + 40), "white")
    draw = ImageDraw.Draw(image)
    for i, (key, title) in enumerate(panels):
        series = {m: sorted((r["classes"], float(r[key])) for r in results[m].values()) for m in results}
        _panel(draw, (i * pw + 60, 40, (i + 1) * pw - 20, ph - 30), title, series)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def run(
    out_dir: str | Path,
    *,
    benchmarks: Sequence[str] = BENCHMARKS,
    modes: Sequence[str] = MODES,
    image_size: int = IMAGE_SIZE,
    repeats: int = 2,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure every (vocabulary, mode) in its own subprocess; write the JSON and the plot; return the
    results ``{"setup", "results": {mode: {benchmark: figures}}}``. ``quick`` times 1 steady forward."""
    repeats = 1 if quick else repeats
    results: dict[str, dict[str, Any]] = {m: {} for m in modes}
    for benchmark in benchmarks:
        for mode in modes:
            results[mode][benchmark] = _in_subprocess(benchmark, mode, image_size, repeats)
            print(f"[vocab_scaling] {benchmark} {mode}: {results[mode][benchmark]}", flush=True)
    out = {
        "setup": f"tiny OMTSeg ({TINY_CONFIG.name}), 1 image {image_size}x{image_size}, CPU, inference mode, "
        f"median of {repeats}; memory: ru_maxrss growth in a fresh process per configuration",
        "results": results,
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(out, folder / "vocab_scaling.json", indent=2)
    panels = [("forward_cpu_s", "forward, CPU s / image"),
              ("predict_cpu_s", "predict (semantic), CPU s / image"),
              ("peak_predict_mib", "peak RSS growth (predict), MiB")]  # fmt: skip
    line_plot(folder / "vocab_scaling.png", results, panels)
    return out


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/vocab_scaling")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--quick", action="store_true", help="1 steady forward instead of 2")
    parsed = parser.parse_args(args)
    print(json.dumps(run(parsed.out, image_size=parsed.image_size, quick=parsed.quick), indent=2))


if __name__ == "__main__":
    main()
