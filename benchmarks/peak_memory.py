"""Peak memory of ``omtseg predict`` against image size and vocabulary size (issue 16 item 3, issue 14).

Every configuration runs ``omtseg predict`` (the demo recipe, configs/demo.yaml: the tiny model at
``eval_size`` 64, random weights, ``--allow_random_weights``) on one image in a **fresh process**, and its
peak resident set size (``VmHWM`` of ``/proc/self/status``, written as it exits; see :func:`peak_rss_kib`
for why not ``ru_maxrss``) covers the whole process as a user runs it (imports, model, image decode,
forward, post-processing, PNGs, overlay). Configurations are interleaved over the repeats, so a change of
machine load hits them alike; the figure is the median. The children run with glibc's malloc defaults (no
``MALLOC_*`` tuning) and one thread.

Configurations:

- ``image_size``: a 640 x 480 and a 4000 x 3000 photo (the COCO sample's first image, resized), with the
  writer's defaults (panoptic + semantic PNGs and an overlay at the photo's size) and without overlays.
  Goal: peak RSS at 4000 x 3000 <= 2x that at 640 x 480.
- ``classes``: a 1920 x 1080 photo with 20 and with 2,000 classes (``--data.init_args.predict_class_names``;
  ADE20K-847's names, then "small ..." and "large ..." variants). Goal: 2,000 classes under 4 GB.

Run: ``python -m benchmarks.peak_memory --out outputs/bench/peak_memory [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
PHOTO_DIR = REPO.parent / "shared" / "data" / "coco_panoptic_sample" / "images"
MIB = 1024  # ru_maxrss is in KiB on Linux


def class_names(count: int) -> list[str]:
    """``count`` distinct class names: ADE20K-847's first names, then "small <name>", "large <name>"."""
    from omtseg.data.benchmark_registry import zero_shot_vocabulary  # here: children import this module light

    base = list(dict.fromkeys(n.lower() for n in zero_shot_vocabulary("ade20k_847").names))
    names = [*base, *(f"small {n}" for n in base), *(f"large {n}" for n in base)]
    if count > len(names):
        raise ValueError(f"At most {len(names)} distinct class names are available, asked for {count}.")
    return names[:count]


def write_photo(folder: Path, height: int, width: int) -> Path:
    """A photo-like JPEG of the given size in its own folder (the COCO sample's first image, resized)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = sorted(PHOTO_DIR.glob("*.jpg"))
    if source:
        with Image.open(source[0]) as opened:
            picture = opened.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    else:  # a smooth random picture; a JPEG of pixel noise would be unrealistically large
        import numpy as np

        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    path = folder / "photo.jpg"
    picture.save(path, quality=90)
    return path


PEAK_RSS_FILE = "OMTSEG_BENCH_PEAK_RSS_FILE"
"""Environment variable naming the file a child writes its peak RSS (KiB) to as it exits."""


def peak_rss_kib() -> int:
    """This process's peak resident set size since it started its program (``VmHWM``, KiB).

    Not ``ru_maxrss``: Linux keeps in it the resident set of the process before ``exec``, i.e. of the parent
    at ``fork`` time, so a child of a large benchmark process reads at least the parent's size.
    """
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def report_peak_rss() -> None:
    """Write :func:`peak_rss_kib` to the file named by :data:`PEAK_RSS_FILE` (called as a child exits)."""
    with open(os.environ[PEAK_RSS_FILE], "w") as f:
        f.write(str(peak_rss_kib()))


def run_child(code: str, args: list[str], workdir: Path) -> tuple[float, str, str]:
    """Run ``python -c code args`` in a fresh process (1 thread, glibc malloc defaults): its peak RSS in
    MiB, stdout and stderr. ``code`` must call :func:`report_peak_rss` on the way out.

    Raises:
        RuntimeError: the child failed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    with tempfile.TemporaryDirectory() as tmp:
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **{PEAK_RSS_FILE: f"{tmp}/peak"})
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=workdir, env=env, capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{code} {args[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        peak = int(Path(f"{tmp}/peak").read_text()) / MIB
    return peak, done.stdout, done.stderr


def predict_peak_rss(image_dir: Path, out_dir: Path, extra: list[str], workdir: Path) -> dict[str, float]:
    """Run ``omtseg predict`` on ``image_dir`` in a fresh process: its peak RSS (MiB) and wall seconds."""
    args = ["predict", "--config", str(DEMO_CONFIG), "--allow_random_weights", "true",
            "--data.init_args.predict_image_dir", str(image_dir),
            "--prediction_writer.output_dir", str(out_dir), "--trainer.enable_progress_bar", "false",
            *extra]  # fmt: skip
    code = (
        "import sys; from benchmarks.peak_memory import report_peak_rss; from omtseg.cli import main\n"
        "try:\n    main(sys.argv[1:])\nfinally:\n    report_peak_rss()"
    )
    start = time.perf_counter()
    peak, _, _ = run_child(code, args, workdir)
    return {"peak_rss_mib": peak, "wall_s": time.perf_counter() - start}


def _interleaved(configs: dict[str, tuple[Path, list[str]]], repeats: int, tmp: Path) -> dict[str, Any]:
    """Each configuration ``repeats`` times, round-robin (rotated each round): medians and every value."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            image_dir, extra = configs[name]
            runs[name].append(predict_peak_rss(image_dir, tmp / "out" / name, extra, tmp))
            print(f"[peak_memory] {name}: {runs[name][-1]}", flush=True)
    return {
        name: {
            "peak_rss_mib": statistics.median(v["peak_rss_mib"] for v in values),
            "wall_s": statistics.median(v["wall_s"] for v in values),
            "peak_rss_mib_runs": [round(v["peak_rss_mib"], 1) for v in values],
        }
        for name, values in runs.items()
    }


def run(out_dir: str | Path, *, repeats: int = 2, quick: bool = False) -> dict[str, Any]:
    """Measure every configuration; write ``peak_memory.json``; return the results."""
    from omtseg.io import save_json

    repeats = 1 if quick else repeats
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="omtseg_peak_memory_") as name:
        tmp = Path(name)
        small = write_photo(tmp / "img_640x480", 480, 640).parent
        large = write_photo(tmp / "img_4000x3000", 3000, 4000).parent
        hd = write_photo(tmp / "img_1920x1080", 1080, 1920).parent
        no_overlays = ["--prediction_writer.overlays", "false"]
        image_size = _interleaved(
            {"640x480": (small, []), "4000x3000": (large, []),
             "640x480_no_overlays": (small, no_overlays), "4000x3000_no_overlays": (large, no_overlays)},
            repeats, tmp,
        )  # fmt: skip
        names = "--data.init_args.predict_class_names"
        vocabularies = {f"{k}_classes_1920x1080": (hd, [names, json.dumps(class_names(k))])
                        for k in (20, 2000)}  # fmt: skip
        classes = _interleaved(vocabularies, repeats, tmp)
    result = {
        "setup": "omtseg predict, configs/demo.yaml (tiny model, eval_size 64, random weights), one image "
        "per fresh process, 1 thread, glibc malloc defaults; peak = VmHWM of the process; median of "
        f"{repeats} interleaved runs",
        "image_size": image_size,
        "classes": classes,
        "ratio_4000x3000_over_640x480": image_size["4000x3000"]["peak_rss_mib"]
        / image_size["640x480"]["peak_rss_mib"],
        "ratio_4000x3000_over_640x480_no_overlays": image_size["4000x3000_no_overlays"]["peak_rss_mib"]
        / image_size["640x480_no_overlays"]["peak_rss_mib"],
        "classes_2000_1920x1080_mib": classes["2000_classes_1920x1080"]["peak_rss_mib"],
    }
    save_json(result, folder / "peak_memory.json", indent=2)
    return result


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/peak_memory")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one run per configuration")
    parsed = parser.parse_args(args)
    print(json.dumps(run(parsed.out, repeats=parsed.repeats, quick=parsed.quick), indent=2))


if __name__ == "__main__":
    main()
