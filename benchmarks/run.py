"""``make bench``: run every performance suite in turn and write one report.

Each suite is a module with ``run(out_dir) -> dict`` (given its own folder ``<out>/<suite>``). A suite that
raises is recorded as failed, with its error and traceback, in the results; the remaining suites still run
and the harness exits with status 1 at the end. A suite may report itself skipped by returning
``{"skipped": reason}`` (the GPU suite without CUDA). Goals are judged here from each suite's numbers
(:data:`GOALS`); a missed goal is a finding of the report, not a failure of the run.

Outputs under ``--out``: ``results.json`` (machine, per-suite results, goals; rewritten after every suite so a
crash keeps what finished), ``results.md`` (one table per suite) and ``goals.png`` (each goal's margin).

Run: ``python -m benchmarks.run --out outputs/bench [--only beit3,pq] [--quick] [--threads N]``; it restarts
itself with :data:`MALLOC_ENV` unless ``--no-malloc-tuning`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from omtseg.io import atomic_path, save_json

REPO = Path(__file__).resolve().parents[1]

MALLOC_ENV: dict[str, str] = {
    # glibc malloc otherwise maps every block over 32 MiB fresh (mmap) and unmaps it on free, so each big
    # activation pays page faults on first touch: BEiT-3 base forward measured 6.4 s with the defaults and
    # 0.62 s with these on the 2-core VM. Keeping freed memory (trim threshold) and padding the heap
    # measures the model rather than the kernel's page-fault path; --no-malloc-tuning measures the default.
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30),
    "MALLOC_TOP_PAD_": str(2**30),
}

SUITES: dict[str, str] = {
    # name -> module with run(out_dir) -> dict, in running order (cheap first, so a late crash loses little)
    "deform_attn": "benchmarks.deform_attn_speed",
    "beit3": "benchmarks.beit3_speed",
    "pq": "benchmarks.pq_speed",
    "vocab_scaling": "benchmarks.vocab_scaling",
    "peak_memory": "benchmarks.peak_memory",
    "train_infer": "benchmarks.train_infer",
    "api_speed": "benchmarks.api_speed",
    "onnx": "benchmarks.onnx_speed",
    "gpu": "benchmarks.gpu",
}

QUICK_KWARGS: dict[str, dict[str, Any]] = {
    # --quick: smaller settings for suites whose run() takes them; `quick=True` goes to any run() that has it.
    "deform_attn": {"repeats": 2},
    "pq": {"num_images": 20, "repeats": 1},
}


@dataclass(frozen=True)
class Goal:
    """A headline figure of a suite, optionally with a target.

    Attributes:
        suite: the suite whose result holds the figure.
        name: what the figure is, for the tables.
        value: reads the figure from the suite's result dict (raises KeyError when it is absent).
        op: ">=" or "<=" against ``target``; None for a figure reported without a goal.
        target: the goal's threshold.
        unit: printed after the value ("x", "img/s", "%").
    """

    suite: str
    name: str
    value: Callable[[Mapping[str, Any]], float]
    op: str | None = None
    target: float | None = None
    unit: str = ""

    def judge(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``{"name", "value", "goal", "met"}``; value None (with ``missing``) when the figure is absent."""
        row: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "op": self.op,
            "target": self.target,
            "goal": self.goal_text(),
            "met": None,
        }
        try:
            value = float(self.value(result))
        except (KeyError, TypeError, ZeroDivisionError) as e:
            row.update(value=None, missing=f"{type(e).__name__}: {e}")
            return row
        row["value"] = value
        if self.op is not None and self.target is not None:
            row["met"] = value >= self.target if self.op == ">=" else value <= self.target
        return row

    def goal_text(self) -> str:
        return "" if self.op is None else f"{self.op} {self.target:g}{self.unit}"


def at(*path: str, scale: float = 1.0) -> Callable[[Mapping[str, Any]], float]:
    """Reads ``scale * result[path[0]][path[1]]...``."""

    def get(result: Mapping[str, Any]) -> float:
        value: Any = result
        for key in path:
            value = value[key]
        return scale * float(value)

    return get


def ratio(
    num: Callable[[Mapping[str, Any]], float], den: Callable[[Mapping[str, Any]], float]
) -> Callable[[Mapping[str, Any]], float]:
    """``num(result) / den(result)``."""
    return lambda result: num(result) / den(result)




_PD, _INJ, _PEAK = "pixel_decoder_512px", "adapter_injector_1024px", "peak_forward_backward_mib"
GOALS: list[Goal] = [
    Goal(
        "deform_attn",
        "pixel decoder 512px: ours / reference fwd+bwd time",
        ratio(at(_PD, "ours", "forward_backward_ms"), at(_PD, "reference", "forward_backward_ms")),
        unit="x",
    ),
    Goal(
        "deform_attn",
        "adapter injector 1024px: ours / reference fwd+bwd peak memory",
        ratio(at(_INJ, "ours", _PEAK), at(_INJ, "reference", _PEAK)),
        unit="x",
    ),
    Goal("beit3", "BEiT-3 tiny forward: ours / torchscale time", at("tiny", "ratio_ours_over_torchscale"),
         "<=", 0.8, "x"),
    Goal("beit3", "BEiT-3 base forward: ours / torchscale time", at("base", "ratio_ours_over_torchscale"),
         "<=", 0.8, "x"),
    # The goal: our pq_compute, as users run it (threads on all cores), >= 10x the COCO panoptic
    # API's single-process pq_compute on the same files; on both datasets. One-thread figures are reported.
    Goal("pq", "PQ speed-up over the COCO panoptic API single-process, Voronoi maps (ours on all cores)",
         at("ratio_to_omtseg", "panopticapi_single_core"), ">=", 10.0, "x"),
    Goal("pq", "PQ speed-up over the COCO panoptic API single-process, COCO-derived maps (ours on all cores)",
         at("coco_maps", "ratio_to_omtseg", "panopticapi_single_core"), ">=", 10.0, "x"),
    Goal("pq", "PQ speed-up over the COCO panoptic API, Voronoi maps (ours on one thread)",
         ratio(at("seconds", "panopticapi_single_core"), at("seconds", "omtseg_1_worker")), unit="x"),
    Goal("pq", "PQ speed-up over the COCO panoptic API, COCO-derived maps (ours on one thread)",
         ratio(at("coco_maps", "seconds", "panopticapi_single_core"),
               at("coco_maps", "seconds", "omtseg_1_worker")), unit="x"),
    Goal("pq", "PQ speed-up over hotcoco (ours on all cores)", at("ratio_to_omtseg", "hotcoco"), unit="x"),
    # Issue 14: per text-attention mode, ADE20K-847 vs VOC-20 (tiny model, 640 px); per_name is the tiny
    # recipe's mode (configs/model/omtseg_tiny.yaml), sequential the paper's and OMTSeg's default.
    *(Goal("vocab_scaling", f"{mode} forward: ADE20K-847 / VOC-20 time",
           at("ratios", mode, "forward_847_over_20"), "<=", 1.5, "x") for mode in ("per_name", "sequential")),
    Goal("vocab_scaling", "one_way forward: ADE20K-847 / VOC-20 time",
         at("ratios", "one_way", "forward_847_over_20"), unit="x"),
    *(Goal("vocab_scaling", f"{mode} predict peak RSS: ADE20K-847 / VOC-20",
           at("ratios", mode, "peak_rss_847_over_20"), "<=", 2.0, "x")
      for mode in ("per_name", "sequential", "one_way")),
    # Issue 16 item 3: omtseg predict's peak RSS, each configuration in a fresh process (ru_maxrss).
    Goal("peak_memory", "omtseg predict peak RSS: 4000x3000 / 640x480 photo (overlays on)",
         at("ratio_4000x3000_over_640x480"), "<=", 2.0, "x"),
    Goal("peak_memory", "omtseg predict peak RSS: 4000x3000 / 640x480 photo (no overlays)",
         at("ratio_4000x3000_over_640x480_no_overlays"), unit="x"),
    Goal("peak_memory", "omtseg predict peak RSS, 2,000 classes at 1920x1080",
         at("classes_2000_1920x1080_mib"), "<=", 4096.0, " MiB"),
    Goal("train_infer", "demo training step (batch 8, 64 px)", at("train", "step_ms"), unit=" ms"),
    Goal("train_infer", "demo inference per image (batch 10, 64 px)",
         at("inference", "batched", "ms_per_image"), unit=" ms"),
    Goal("api_speed", "Segmenter API on the demo model, batch 1 (64 px, 11 classes)",
         at("batch_1", "images_per_s"), unit=" img/s"),
    Goal("api_speed", "Segmenter API on the demo model, batch 8 (64 px, 11 classes)",
         at("batch_8", "images_per_s"), unit=" img/s"),
    # The goal: ONNX Runtime >= 1.5x faster than PyTorch eager on the CPU, per image, same threads.
    Goal("onnx", "ONNX Runtime / eager CPU speed-up, demo model (64 px)", at("demo_64px", "speedup"),
         ">=", 1.5, "x"),
    Goal("onnx", "ONNX Runtime / eager CPU speed-up, tiny model (640 px)", at("tiny_640px", "speedup"),
         ">=", 1.5, "x"),
    Goal("onnx", "ONNX Runtime vs eager class logits, max abs diff (640 px)",
         at("tiny_640px", "max_abs_diff", "class_logits"), "<=", 1e-4),
    Goal("onnx", "ONNX Runtime vs eager mask logits, max abs diff (640 px)",
         at("tiny_640px", "max_abs_diff", "mask_logits"), "<=", 1e-4),
    Goal("gpu", "training images/s (BEiT-3 large, 640 px, bf16)", at("train", "images_per_s"),
         ">=", 40.0, " img/s"),
    Goal("gpu", "inference images/s (133 COCO classes, panoptic)", at("inference", "images_per_s"),
         ">=", 60.0, " img/s"),
    Goal("gpu", "backbone MFU, training (fwd + activation bwd)",
         at("backbone", "train", "mfu", scale=100.0), ">=", 35.0, "%"),
    Goal("gpu", "backbone MFU, inference",
         at("backbone", "inference", "mfu", scale=100.0), ">=", 35.0, "%"),
]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch version, date and commit of the machine running the suites."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc_env": {k: os.environ[k] for k in MALLOC_ENV if k in os.environ},
    }
    return info


def _suite_kwargs(fn: Callable[..., Any], name: str, quick: bool) -> tuple[dict[str, Any], str | None]:
    """Keyword arguments for a suite's run() in quick mode, and a note when it has no reduced mode."""
    if not quick:
        return {}, None
    params = inspect.signature(fn).parameters
    wanted = dict(QUICK_KWARGS.get(name, {}))
    if "quick" in params:
        wanted["quick"] = True
    kwargs = {k: v for k, v in wanted.items() if k in params}
    note = None if kwargs else "--quick: this suite has no reduced mode; it ran in full"
    return kwargs, note


def run_suite(name: str, module_name: str, out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Import and run one suite; returns ``{"status", "seconds", "result" | "error"...}``, never raises
    for the suite's own errors (they are the report's content)."""
    start = time.perf_counter()
    # Shared machines: the load around a suite says how far to trust its timings.
    record: dict[str, Any] = {"module": module_name, "load_average_before": _load()}
    try:
        module = importlib.import_module(module_name)
        kwargs, note = _suite_kwargs(module.run, name, quick)
        if note:
            record["note"] = note
        result = module.run(out_dir / name, **kwargs)
        if not isinstance(result, dict):
            raise TypeError(f"{module_name}.run returned {type(result).__name__}, expected a dict of results")
        record["status"] = "skipped" if "skipped" in result else "ok"
        record["result"] = result
    except Exception as e:  # recorded with its traceback; main() fails the run at the end
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        print(record["traceback"], file=sys.stderr, flush=True)
    record["seconds"] = time.perf_counter() - start
    record["load_average_after"] = _load()
    return record


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages (runnable processes), None where the OS has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def judge_goals(suites: Mapping[str, Mapping[str, Any]], goals: Sequence[Goal] = GOALS) -> list[dict]:
    """Every goal of a suite that ran and produced results, judged."""
    rows = []
    for goal in goals:
        record = suites.get(goal.suite)
        if record is None or record.get("status") != "ok":
            continue
        rows.append({"suite": goal.suite, **goal.judge(record["result"])})
    return rows


def run_all(
    out_dir: str | Path,
    *,
    only: Sequence[str] | None = None,
    quick: bool = False,
    suites: Mapping[str, str] = SUITES,
    goals: Sequence[Goal] = GOALS,
) -> dict[str, Any]:
    """Run the selected suites in order, writing the reports after each one; returns the results.

    Raises:
        ValueError: ``only`` names a suite that does not exist.
    """
    names = list(suites) if not only else list(only)
    unknown = [n for n in names if n not in suites]
    if unknown:
        raise ValueError(f"Unknown suite(s) {unknown}; choose from {list(suites)} (comma separated).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "quick": quick, "suites": {}, "goals": []}
    start = time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        record = run_suite(name, suites[name], out, quick=quick)
        results["suites"][name] = record
        print(f"[bench] {name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
        results["goals"] = judge_goals(results["suites"], goals)
        results["total_seconds"] = time.perf_counter() - start
        write_reports(results, out)
    return results


# ---------------------------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(result: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts/lists -> ``[("a.b.0", value)]``; short lists of scalars stay one row."""
    if isinstance(result, Mapping):
        rows = []
        for key, value in result.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(result, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple)) for v in result) and len(result) <= 8:
            return [(prefix, "[" + ", ".join(_fmt(v) for v in result) + "]")]
        rows = []
        for i, value in enumerate(result):
            rows += flatten(value, f"{prefix}.{i}")
        return rows
    return [(prefix, result)]


MAX_ROWS = 120  # per suite in results.md; results.json has everything


def render_markdown(results: Mapping[str, Any]) -> str:
    """results.md: the machine, a goal summary, then one table per suite."""
    m = results["machine"]
    lines = [
        "# omtseg benchmarks",
        "",
        f"{m['date']}, commit {m['git_commit']}, {m['cpu_model']} ({m['cpus_usable']} usable of "
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads), torch {m['torch']}, "
        f"CUDA device: {m['cuda_device']}. Total {results.get('total_seconds', 0.0):.0f} s"
        + (" (--quick)." if results.get("quick") else "."),
        "",
        "| suite | status | seconds | load average (1/5/15 min) before / after |",
        "|---|---|---|---|",
    ]
    for name, rec in results["suites"].items():
        status = rec["status"] + (f": {_fmt(rec['error'])}" if rec["status"] == "failed" else "")
        if rec["status"] == "skipped":
            status += f": {_fmt(rec['result']['skipped'])}"
        load = rec.get("load_average_before"), rec.get("load_average_after")
        lines.append(f"| {name} | {status} | {rec['seconds']:.1f} | {_fmt(load[0])} / {_fmt(load[1])} |")
    for name, rec in results["suites"].items():
        lines += ["", f"## {name}", ""]
        if rec.get("note"):
            lines += [f"_{rec['note']}_", ""]
        if rec["status"] == "failed":
            lines += ["Failed:", "", "```", rec["traceback"].rstrip(), "```"]
            continue
        goals = [g for g in results["goals"] if g["suite"] == name]
        if goals:
            lines += ["| figure | value | goal | met |", "|---|---|---|---|"]
            for g in goals:
                missing = g["value"] is None
                value = "missing: " + g["missing"] if missing else f"{_fmt(g['value'])}{g['unit']}"
                met = "" if g["met"] is None else ("yes" if g["met"] else "**no**")
                lines.append(f"| {g['name']} | {value} | {g['goal']} | {met} |")
            lines.append("")
        rows = flatten(rec["result"])
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows[:MAX_ROWS]]
        if len(rows) > MAX_ROWS:
            lines.append(f"| ... | {len(rows) - MAX_ROWS} more rows in results.json |")
    return "\n".join(lines) + "\n"


def bar_chart(
    path: str | Path,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    reference: float | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> None:
    """A horizontal bar chart PNG (PIL), bars labelled with their values; ``reference`` draws a line."""
    bar_h, left, right, top = 22, 330, 110, 34
    width = 900
    height = top + bar_h * max(len(values), 1) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    finite = [v for v in values if math.isfinite(v)]
    vmax = max([*finite, reference or 0.0, 1e-12])
    scale = (width - left - right) / vmax
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * bar_h
        draw.text((10, y + 5), label[:52], fill="black")
        color = colors[i] if colors is not None else (70, 110, 180)
        if math.isfinite(value):
            draw.rectangle([left, y + 3, left + max(1, int(value * scale)), y + bar_h - 3], fill=color)
        draw.text((left + int(max(value, 0.0) * scale) + 6 if math.isfinite(value) else left, y + 5),
                  f"{value:.3g}", fill="black")
    if reference is not None:
        x = left + int(reference * scale)
        draw.line([x, top - 4, x, height - 24], fill=(200, 30, 30), width=2)
        draw.text((x + 3, height - 20), f"{reference:g}", fill=(200, 30, 30))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_reports(results: Mapping[str, Any], out_dir: Path) -> None:
    """results.json, results.md and (when any goal was measured) goals.png."""
    save_json(results, out_dir / "results.json", indent=2)
    with atomic_path(out_dir / "results.md") as tmp:
        tmp.write_text(render_markdown(results))
    rows = [g for g in results["goals"] if g["met"] is not None]
    if rows:
        margins = [_margin(g) for g in rows]
        bar_chart(
            out_dir / "goals.png",
            "goal margin (measured vs target; >= 1 means met)",
            [f"{g['suite']}: {g['name']}" for g in rows],
            margins,
            reference=1.0,
            colors=[(60, 160, 80) if g["met"] else (200, 60, 60) for g in rows],
        )


def _margin(goal_row: Mapping[str, Any]) -> float:
    """Measured over target for ">=" goals, target over measured for "<=" ones: >= 1 means met."""
    op, target, value = goal_row["op"], goal_row["target"], goal_row["value"]
    if value == 0:
        return 0.0 if op == ">=" else math.inf
    return value / target if op == ">=" else target / value


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench", help="folder of results.json/.md and suite outputs")
    parser.add_argument("--only", default=None, help=f"comma-separated suites, from {list(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="smaller settings (a smoke run, not a report)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="glibc malloc defaults (MALLOC_ENV)")
    ns = parser.parse_args(args)
    if ns.threads is not None:
        if ns.threads < 1:
            parser.error(f"--threads {ns.threads}: give a positive thread count.")
        torch.set_num_threads(ns.threads)
    only = [s.strip() for s in ns.only.split(",") if s.strip()] if ns.only else None
    try:
        results = run_all(ns.out, only=only, quick=ns.quick, suites=SUITES, goals=GOALS)
    except ValueError as e:
        parser.error(str(e))
    failed = [n for n, r in results["suites"].items() if r["status"] == "failed"]
    print(f"[bench] wrote {Path(ns.out) / 'results.md'} in {results['total_seconds']:.0f} s", flush=True)
    if failed:
        print(f"[bench] FAILED suites: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


def _with_malloc_tuning(args: list[str]) -> None:
    """Restart this command with :data:`MALLOC_ENV` set (glibc reads it at process start only)."""
    if "--no-malloc-tuning" in args or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *args], {**os.environ, **MALLOC_ENV})


if __name__ == "__main__":
    _with_malloc_tuning(sys.argv[1:])
    sys.exit(main())
