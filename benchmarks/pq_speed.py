"""PQ speed: omtseg's ``pq_compute`` against hotcoco's and the COCO panoptic API's, on the same files.

Builds two sets of ``num_images`` COCO-panoptic ground-truth PNGs with perturbed predictions (shifted,
relabelled, dropped, merged segments, extra false positives): blocky Voronoi maps (void borders, some
crowd), and maps derived from the two real COCO panoptic sample images (real, curved boundaries). Times
each implementation on the same files, median over repeats, and checks that they agree. The COCO panoptic
API (``panopticapi-lite`` on PyPI, the cocodataset/panopticapi code) is installed with
``pip install --no-deps --target`` into a throwaway folder under ``out_dir``, never into the environment;
it is timed single-process (``pq_compute_single_core``), as its multi-process path forks one worker per CPU.

Run: ``python -m benchmarks.pq_speed --out outputs/bench/pq_speed [--num-images 200] [--workers N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hotcoco.panoptic import pq_compute as hotcoco_pq_compute
from PIL import Image

from omtseg.evaluation.panoptic import pq_compute
from omtseg.io import id2rgb, read_panoptic_png, save_image, save_json

NUM_THINGS, NUM_STUFF = 80, 53  # the COCO panoptic split
COCO_SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "coco_panoptic_sample"
PANOPTICAPI = "panopticapi-lite==0.2.0"


def _categories() -> list[dict[str, Any]]:
    return [
        {"id": k + 1, "name": f"class{k + 1}", "isthing": int(k < NUM_THINGS), "color": [k, k, k]}
        for k in range(NUM_THINGS + NUM_STUFF)
    ]


def _ground_truth(rng: np.random.Generator, h: int, w: int, num_segments: int) -> np.ndarray:
    """(H, W) index map 0..num_segments-1 of blocky Voronoi cells (cells of 4x4 pixels), -1 at void."""
    gh, gw = -(-h // 4), -(-w // 4)
    centers = rng.uniform((0, 0), (gh, gw), size=(num_segments, 2))
    ys, xs = np.mgrid[0:gh, 0:gw]
    dist = (ys[..., None] - centers[:, 0]) ** 2 + (xs[..., None] - centers[:, 1]) ** 2  # (gh, gw, S)
    cells = dist.argmin(-1).repeat(4, 0).repeat(4, 1)[:h, :w]
    border = int(rng.integers(0, 6))
    if border:
        cells[:border], cells[:, -border:] = -1, -1
    return cells


def _write(folder: Path, image_id: int, id_map: np.ndarray, segments: list[dict[str, Any]]) -> dict[str, Any]:
    file_name = f"{image_id:012d}.png"
    save_image(id2rgb(id_map), folder / file_name)
    return {"image_id": image_id, "file_name": file_name, "segments_info": segments}


def _image_pair(
    rng: np.random.Generator,
    cells: np.ndarray,
    cats: np.ndarray,
    crowd: np.ndarray,
    category_ids: np.ndarray,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]:
    """Ground truth and a perturbed prediction from an (H, W) segment-index map (-1 at void).

    The prediction is the same cells shifted, ~10% dropped, ~10% relabelled, one pair merged and a few
    extra false positives. Returns ``(gt_map, gt_segments, pred_map, pred_segments)``.
    """
    num_segments = cats.size
    h, w = cells.shape
    ids = rng.choice(np.arange(1, 256**3), size=num_segments, replace=False)
    gt_map = np.where(cells >= 0, ids[cells.clip(min=0)], 0)
    areas = np.bincount(cells[cells >= 0], minlength=num_segments)
    gt_segments = [
        {"id": int(ids[s]), "category_id": int(cats[s]), "iscrowd": int(crowd[s]), "area": int(areas[s])}
        for s in range(num_segments)
        if areas[s]
    ]
    pred_ids = rng.choice(np.arange(1, 256**3), size=num_segments + 3, replace=False)
    keep = rng.random(num_segments) >= 0.1
    pred_cats = np.where(rng.random(num_segments) < 0.1, rng.choice(category_ids, num_segments), cats)
    if num_segments >= 2:
        a, b = rng.choice(num_segments, 2, replace=False)
        pred_ids[b], pred_cats[b] = pred_ids[a], pred_cats[a]
    shifted = np.roll(cells, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), (0, 1))
    pred_map = np.where((shifted >= 0) & keep[shifted.clip(min=0)], pred_ids[shifted.clip(min=0)], 0)
    extra_cats = {}
    for e in range(3):
        y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
        extra = pred_ids[num_segments + e]
        pred_map[y : y + int(rng.integers(10, 40)), x : x + int(rng.integers(10, 40))] = extra
        extra_cats[int(extra)] = int(rng.choice(category_ids))
    cat_of = {int(pred_ids[s]): int(pred_cats[s]) for s in range(num_segments)} | extra_cats
    pred_segments = [
        {"id": i, "category_id": cat_of[i], "iscrowd": 0} for i in np.unique(pred_map).tolist() if i
    ]
    return gt_map, gt_segments, pred_map, pred_segments


def _coco_sample_cells() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The real COCO panoptic sample's maps as ``(cells, category ids, crowd)``: cells index segments_info."""
    data = json.loads((COCO_SAMPLE / "panoptic.json").read_text())
    out = []
    for ann in data["annotations"]:
        ids = read_panoptic_png(COCO_SAMPLE / "panoptic" / ann["file_name"])
        segments = ann["segments_info"]
        cells = np.full(ids.shape, -1, dtype=np.int64)
        for k, segment in enumerate(segments):
            cells[ids == segment["id"]] = k
        cats = np.array([s["category_id"] for s in segments])
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments])
        out.append((cells, cats, crowd))
    return out


def make_dataset(
    out_dir: Path,
    *,
    num_images: int,
    size: tuple[int, int] = (480, 640),
    num_segments: int = 20,
    seed: int = 0,
    maps: str = "voronoi",
) -> tuple[Path, Path]:
    """Write ``gt.json`` + ``gt/`` and ``pred.json`` + ``pred/`` under ``out_dir``; returns the two JSONs.

    Args:
        maps: ``"voronoi"``: blocky Voronoi cells of ``size`` with ``num_segments`` segments of random
            COCO-split categories, some crowd; ``"coco"``: the two real COCO panoptic sample maps (curved
            real boundaries, 18 and 32 segments, their categories and crowd flags), randomly flipped.
    """
    rng = np.random.default_rng(seed)
    if maps == "coco":
        categories = json.loads((COCO_SAMPLE / "panoptic.json").read_text())["categories"]
        samples = _coco_sample_cells()
    elif maps == "voronoi":
        categories = _categories()
    else:
        raise ValueError(f"maps must be 'voronoi' or 'coco', got {maps!r}.")
    category_ids = np.array([c["id"] for c in categories])
    gt_anns, pred_anns, images = [], [], []
    for image_id in range(1, num_images + 1):
        if maps == "coco":
            cells, cats, crowd = samples[image_id % len(samples)]
            if rng.random() < 0.5:
                cells = cells[:, ::-1].copy()
        else:
            cells = _ground_truth(rng, size[0], size[1], num_segments)
            cats = rng.integers(1, len(categories) + 1, size=num_segments)
            crowd = (rng.random(num_segments) < 0.05) & (cats <= NUM_THINGS)
        gt_map, gt_segments, pred_map, pred_segments = _image_pair(rng, cells, cats, crowd, category_ids)
        h, w = cells.shape
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w})
        gt_anns.append(_write(out_dir / "gt", image_id, gt_map, gt_segments))
        pred_anns.append(_write(out_dir / "pred", image_id, pred_map, pred_segments))
    save_json({"images": images, "annotations": gt_anns, "categories": categories}, out_dir / "gt.json")
    save_json({"annotations": pred_anns}, out_dir / "pred.json")
    return out_dir / "gt.json", out_dir / "pred.json"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout at the file-descriptor level (hotcoco prints from native code)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            with contextlib.redirect_stdout(devnull):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _median_seconds(fn: Callable[[], dict[str, Any]], repeats: int) -> tuple[float, dict[str, Any]]:
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        with _quiet():
            result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _panopticapi_single_core(target: Path) -> Callable[[Path, Path], dict[str, Any]] | str:
    """The COCO panoptic API's single-process pq_compute, or why it is not available."""
    if not (target / "panopticapi").is_dir():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            PANOPTICAPI,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return f"pip install {PANOPTICAPI} failed: {done.stderr.strip()[-300:]}"
    sys.path.insert(0, str(target))
    evaluation = importlib.import_module("panopticapi.evaluation")

    def run(gt_json: Path, pred_json: Path) -> dict[str, Any]:
        gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
        categories = {c["id"]: c for c in gt["categories"]}
        preds = {a["image_id"]: a for a in pred["annotations"]}
        pairs = [(a, preds[a["image_id"]]) for a in gt["annotations"]]
        stat = evaluation.pq_compute_single_core(
            0, pairs, str(gt_json.with_suffix("")), str(pred_json.with_suffix("")), categories
        )
        results: dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            results[name], per_class = stat.pq_average(categories, isthing=isthing)
            if name == "All":
                results["per_class"] = per_class
        return results

    return run


def _decode_only(gt_json: Path, pred_json: Path) -> dict[str, Any]:
    """Decode every PNG once with PIL and do nothing else: the floor of any PIL-based evaluation."""
    for json_file in (gt_json, pred_json):
        folder = json_file.with_suffix("")
        for ann in json.loads(json_file.read_text())["annotations"]:
            np.asarray(Image.open(folder / ann["file_name"]))
    return {}


def _max_abs_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    diff = max(abs(a[g][m] - b[g][m]) for g in ("All", "Things", "Stuff") for m in ("pq", "sq", "rq"))
    for key, values in a["per_class"].items():
        other = b["per_class"][key]
        if other.get("tp", 1) + other.get("fp", 0) + other.get("fn", 0):  # hotcoco marks absent classes -1
            diff = max(diff, *(abs(values[m] - other[m]) for m in ("pq", "sq", "rq")))
    return diff


def _measure(
    gt_json: Path,
    pred_json: Path,
    workers: int,
    repeats: int,
    panopticapi: Callable[[Path, Path], dict[str, Any]] | None,
) -> dict[str, Any]:
    """Median seconds of each implementation on one dataset, ratios to omtseg and agreement with it."""
    candidates: dict[str, Callable[[], dict[str, Any]]] = {
        "omtseg": lambda: pq_compute(gt_json, pred_json, workers=workers),
        "omtseg_1_worker": lambda: pq_compute(gt_json, pred_json, workers=1),  # one thread
        "hotcoco": lambda: hotcoco_pq_compute(str(gt_json), str(pred_json)),
    }
    if panopticapi is not None:
        candidates["panopticapi_single_core"] = lambda: panopticapi(gt_json, pred_json)
    timings: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, fn in candidates.items():
        timings[name], results[name] = _median_seconds(fn, repeats)
    # PIL decoding alone: the floor of any PIL-based implementation such as the COCO panoptic API.
    timings["png_decode_only"], _ = _median_seconds(lambda: _decode_only(gt_json, pred_json), repeats)
    return {
        "seconds": timings,
        "ratio_to_omtseg": {name: t / timings["omtseg"] for name, t in timings.items()},
        "max_abs_difference_to_omtseg": {
            name: _max_abs_difference(results["omtseg"], r) for name, r in results.items()
        },
        "pq": results["omtseg"]["All"]["pq"],
    }


def run(out_dir: Path, num_images: int = 200, workers: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Build the two datasets under ``out_dir``, time the implementations, write and return the numbers.

    Args:
        out_dir: working folder (data, the throwaway panopticapi install, ``pq_speed.json``).
        num_images: images per dataset: 640x480 Voronoi maps with 20 segments (the top-level figures), and
            maps derived from the real COCO sample (``coco_maps``: 640x480/640x427 with 18/32 segments).
        workers: threads for omtseg's ``pq_compute``; defaults to the CPU count.
        repeats: timed runs per implementation; medians are reported.

    Returns:
        Per dataset: seconds per implementation and for PIL decoding alone (``png_decode_only``), ratios
        (other / omtseg, > 1 means omtseg is faster) and the largest absolute difference of any PQ/SQ/RQ
        value from omtseg's.
    """
    out_dir = Path(out_dir)
    workers = workers or os.cpu_count() or 1
    panopticapi = _panopticapi_single_core(out_dir / "panopticapi_lib")
    notes = [panopticapi] if isinstance(panopticapi, str) else []
    reference = None if isinstance(panopticapi, str) else panopticapi
    voronoi = make_dataset(out_dir / "data", num_images=num_images)
    coco = make_dataset(out_dir / "data_coco", num_images=num_images, maps="coco")
    report = {
        "num_images": num_images,
        "image_size": [480, 640],
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        **_measure(*voronoi, workers, repeats, reference),
        "coco_maps": _measure(*coco, workers, repeats, reference),
        "notes": notes,
    }
    save_json(report, out_dir / "pq_speed.json", indent=2)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/pq_speed"))
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.num_images, args.workers, args.repeats), indent=2))
