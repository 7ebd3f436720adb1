"""Inference cost per image against vocabulary size, per text-attention mode: K = 20 ... 2,000 classes.

The tiny model of ``configs/model/omtseg_tiny.yaml`` (random weights: cost does not depend on them; its
``img_size`` set to the image side, so no position resampling) segments one 640 x 640 image on CPU,
prompted with the real class lists of Pascal VOC-20, ADE20K-150, Pascal Context-459 and ADE20K-847
(synonyms included, so P prompt entries >= K classes) and with 2,000 names (ADE20K-847's, then "small ..."
and "large ..." variants), in each text-attention mode of :class:`~omtseg.modeling.segmenter.OMTSeg`:

- ``sequential`` (the paper's prompt): names share one sequence with full attention; a vocabulary longer
  than ``max_text_tokens`` (1,022) is cut into chunks, each a full BEiT-3 pass with the image;
- ``per_name``: each name has its own positions and reads itself and the image, in
  one pass whatever K; the image reads every name;
- ``one_way`` (the tiny recipe's mode): as ``per_name``, but the image does not read the names.

Two measurements, both on one thread:

- **time**: all modes and vocabularies in one process; after a warm-up forward per configuration
  (tokenisation cached), ``repeats`` rounds in each of which every configuration runs one forward, in an
  order rotated per round, so a change of machine load hits them alike. Figures are medians of wall and
  process-CPU seconds (``time.process_time``; the stable figure on a shared machine).
- **memory**: each configuration in a **fresh process** that builds the model, runs one forward and one
  ``predict(tasks=("panoptic", "semantic"))`` (what ``omtseg predict`` writes), and reports its peak
  resident set size (``VmHWM``, see :func:`benchmarks.peak_memory.peak_rss_kib`) as it exits.
  ``ready_rss_mib`` is its resident set once the model is built, so ``peak - ready`` is what the inference
  itself added.

Outputs: ``vocab_scaling.json`` and ``vocab_scaling.png`` (time and memory against K, log-scaled K axis).
Run: ``python -m benchmarks.vocab_scaling --out outputs/bench/vocab_scaling [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw

from benchmarks.peak_memory import class_names, run_child
from omtseg.data.benchmark_registry import zero_shot_vocabulary
from omtseg.io import atomic_path, save_json
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, Vocabulary

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "model" / "omtseg_tiny.yaml"
BENCHMARKS = ("pascal_voc_20", "ade20k_150", "pascal_context_459", "ade20k_847", "names_2000")
MODES = ("sequential", "per_name", "one_way")
IMAGE_SIZE = 640
MIB = 1024  # ru_maxrss is in KiB on Linux


def vocabulary(benchmark: str) -> Vocabulary:
    """A benchmark's classes, or ``names_<K>``: K names (:func:`benchmarks.peak_memory.class_names`)."""
    if benchmark.startswith("names_"):
        return Vocabulary.from_names(class_names(int(benchmark.split("_")[1])))
    return zero_shot_vocabulary(benchmark)


def build(mode: str, image_size: int = IMAGE_SIZE) -> OMTSeg:
    """The tiny model in ``mode``, random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    config = yaml.safe_load(TINY_CONFIG.read_text())["model"]["init_args"]
    return OMTSeg(**{**config, "img_size": image_size, "text_attention": mode}).eval()


def _batch(vocab: Vocabulary, image_size: int) -> Batch:
    image = torch.randint(0, 256, (1, 3, image_size, image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    size = (image_size, image_size)
    return Batch(
        images=image,
        padding_mask=torch.zeros((1, image_size, image_size), dtype=torch.bool),
        targets=None,
        infos=[ImageInfo(image_id=0, file_name="random.jpg", orig_size=size, resized_size=size)],
        vocabulary=vocab,
    )


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(benchmark: str, mode: str, image_size: int) -> dict[str, Any]:
    """In a fresh process: build, one forward, one predict (panoptic + semantic); RSS once built."""
    torch.set_num_threads(1)
    model = build(mode, image_size)
    vocab = vocabulary(benchmark)
    batch = _batch(vocab, image_size)
    chunks = model.prompts.tokenize(vocab, per_name=mode != "sequential")
    ready = _rss_mib()
    with torch.inference_mode():
        model(batch.images, vocab)
        model.predict(batch, tasks=("panoptic", "semantic"))
    return {"ready_rss_mib": ready, "chunks": len(chunks),
            "text_tokens": sum(len(c.text_ids) for c in chunks),
            "prompt_entries": sum(len(c.prompt_class) for c in chunks)}  # fmt: skip


def _memory(benchmark: str, mode: str, image_size: int) -> dict[str, Any]:
    """:func:`memory_child` in a fresh process, and its peak RSS."""
    code = (
        "import json; from benchmarks.peak_memory import report_peak_rss\n"
        "from benchmarks.vocab_scaling import memory_child\n"
        f"print(json.dumps(memory_child({benchmark!r}, {mode!r}, {image_size})))\nreport_peak_rss()"
    )
    peak, stdout, _ = run_child(code, [], REPO)
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mib": peak}


def timings(benchmarks: Sequence[str], modes: Sequence[str], image_size: int, repeats: int) -> dict[str, Any]:
    """Interleaved forward timings of every (mode, benchmark) in this process (one thread)."""
    torch.set_num_threads(1)
    models = {mode: build(mode, image_size) for mode in modes}
    vocabs = {b: vocabulary(b) for b in benchmarks}
    images = _batch(vocabs[benchmarks[0]], image_size).images
    configs = [(m, b) for m in modes for b in benchmarks]
    first: dict[tuple[str, str], float] = {}
    wall: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    cpu: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    with torch.inference_mode():
        for mode, b in configs:
            start = time.perf_counter()
            models[mode](images, vocabs[b])
            first[(mode, b)] = time.perf_counter() - start
        for r in range(repeats):
            shift = r * len(configs) // max(repeats, 1)
            for mode, b in configs[shift:] + configs[:shift]:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[mode](images, vocabs[b])
                wall[(mode, b)].append(time.perf_counter() - start)
                cpu[(mode, b)].append(time.process_time() - start_cpu)
            print(f"[vocab_scaling] timing round {r + 1}/{repeats} done", flush=True)
    return {
        mode: {
            b: {"first_forward_s": first[(mode, b)], "forward_s": statistics.median(wall[(mode, b)]),
                "forward_cpu_s": statistics.median(cpu[(mode, b)]),
                "forward_s_runs": [round(t, 3) for t in wall[(mode, b)]]}  # fmt: skip
            for b in benchmarks
        }
        for mode in modes
    }


COLORS = {"sequential": (40, 90, 180), "per_name": (220, 120, 30), "one_way": (40, 160, 60)}


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
    repeats: int = 3,
    quick: bool = False,
) -> dict[str, Any]:
    """Time every (mode, vocabulary) interleaved, measure each one's memory in a fresh process; write the
    JSON and the plot; return ``{"setup", "results": {mode: {benchmark: figures}}, "ratios"}``."""
    if quick:
        benchmarks, repeats = [b for b in benchmarks if b in ("pascal_voc_20", "ade20k_847")], 1
    results = timings(benchmarks, modes, image_size, repeats)
    for b in benchmarks:
        for mode in modes:
            results[mode][b].update(_memory(b, mode, image_size))
            results[mode][b]["classes"] = len(vocabulary(b))
            print(f"[vocab_scaling] {b} {mode}: {results[mode][b]}", flush=True)
    ratios = {
        mode: {
            "forward_847_over_20": results[mode]["ade20k_847"]["forward_s"]
            / results[mode]["pascal_voc_20"]["forward_s"],
            "forward_cpu_847_over_20": results[mode]["ade20k_847"]["forward_cpu_s"]
            / results[mode]["pascal_voc_20"]["forward_cpu_s"],
            "peak_rss_847_over_20": results[mode]["ade20k_847"]["peak_rss_mib"]
            / results[mode]["pascal_voc_20"]["peak_rss_mib"],
        }
        for mode in modes
        if "ade20k_847" in results[mode] and "pascal_voc_20" in results[mode]
    }
    out = {
        "setup": f"tiny OMTSeg ({TINY_CONFIG.name}, img_size {image_size}), 1 image "
        f"{image_size}x{image_size}, CPU, 1 thread, inference mode; time: median of {repeats} interleaved "
        "rounds; memory: VmHWM of a fresh process per configuration (build + forward + predict panoptic "
        "and semantic)",
        "results": results,
        "ratios": ratios,
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(out, folder / "vocab_scaling.json", indent=2)
    panels = [("forward_s", "forward, s / image"), ("peak_rss_mib", "peak RSS (forward + predict), MiB")]
    line_plot(folder / "vocab_scaling.png", results, panels)
    return out


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/vocab_scaling")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="VOC-20 and ADE20K-847 only, one round")
    parsed = parser.parse_args(args)
    result = run(parsed.out, image_size=parsed.image_size, repeats=parsed.repeats, quick=parsed.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
