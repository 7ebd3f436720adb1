"""Evaluate a checkpoint zero-shot on every benchmark present and write the paper's results table.

    omtseg eval-all --ckpt CKPT --out outputs/eval [--root ROOT]     (make eval-all CKPT=...)

Columns are the paper's: mIoU on ADE20K-847, Pascal Context-459, ADE20K-150, Pascal Context-59 and Pascal
VOC-20, then PQ and AP on ADE20K-150 panoptic. ADE20K-150 runs once: its panoptic layout gives PQ, AP and
mIoU together; with only the semantic maps it gives mIoU (PQ and AP are then skipped). Benchmarks whose
prepared layout is absent under the datasets root are skipped with the reason (the missing path and the
``omtseg prepare`` command); a layout that exists but is damaged stops the run before any evaluation.

Every run loads the checkpoint with its saved model config and the metrics its benchmark supports
(``eval_tasks``), and evaluates through ``Trainer.test`` with :class:`ZeroShotDataModule`: the same path
as ``omtseg test --config configs/eval/<benchmark>.yaml``. Outputs: ``results.md`` (the table),
``results.json`` (every logged metric, images, seconds, skip reasons) and Lightning CSV logs.

The open-vocabulary world's test sets (:mod:`omtseg.data.world`: ``test`` with the seen classes, ``unseen``
compositions and ``novel`` concepts, prompted with all 28 names) are evaluated too when they exist under the
world root (``<datasets root>/world`` by default, where ``configs/world.yaml`` and ``make demo`` write them),
with PQ and mIoU per class group in a second table, as ``omtseg test --config configs/eval/world_novel.yaml``
gives them. A world is synthetic: its numbers are no substitute for the real benchmarks, they show whether a
checkpoint reads names it never saw labelled.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from omtseg.checkpoint import check_checkpoint
from omtseg.data.benchmark_registry import BENCHMARKS, DATASETS_ENV, datasets_root
from omtseg.data.datamodule import PanopticDataModule
from omtseg.data.world import world_split_paths
from omtseg.data.zeroshot_datamodule import ZeroShotDataModule, benchmark_missing, benchmark_tasks
from omtseg.io import save_json
from omtseg.lit_module import OMTSegModule

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, evaluation group, logged metric); groups are the runs below, metrics in percent.
    ("A-847", "ade20k_847", "miou"),
    ("PC-459", "pascal_context_459", "miou"),
    ("A-150", "ade20k_150", "miou"),
    ("PC-59", "pascal_context_59", "miou"),
    ("PAS-20", "pascal_voc_20", "miou"),
    ("PQ", "ade20k_150", "pq"),
    ("AP", "ade20k_150", "ap"),
)
"""The paper's zero-shot table, in its column order."""

GROUPS: dict[str, tuple[str, ...]] = {
    # evaluation group -> benchmarks to try, best first (the first one present is run)
    "ade20k_847": ("ade20k_847",),
    "pascal_context_459": ("pascal_context_459",),
    "ade20k_150": ("ade20k_150_panoptic", "ade20k_150"),
    "pascal_context_59": ("pascal_context_59",),
    "pascal_voc_20": ("pascal_voc_20",),
}

WORLD_SETS: dict[str, str] = {
    # evaluation group -> split of the open-vocabulary world (omtseg.data.world)
    "world_seen": "test",
    "world_unseen": "unseen",
    "world_novel": "novel",
}
WORLD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("PQ", "pq"),
    ("PQ seen", "pq_seen"),
    ("PQ unseen", "pq_unseen"),
    ("PQ novel", "pq_novel"),
    ("mIoU", "miou"),
    ("mIoU unseen", "miou_unseen"),
    ("mIoU novel", "miou_novel"),
)


@dataclass
class Planned:
    """One evaluation group: the benchmark to run, or why none can (``benchmark`` None)."""

    group: str
    benchmark: str | None
    notes: list[str]


def plan(root: str | Path | None = None, split: str = "val") -> list[Planned]:
    """Which benchmark each group runs under ``root``, with a note for every layout found missing.

    Raises:
        ValueError: a layout exists but is damaged (see :func:`benchmark_missing`).
    """
    planned = []
    for group, candidates in GROUPS.items():
        notes: list[str] = []
        chosen = None
        for name in candidates:
            reason = benchmark_missing(name, root=root, split=split)
            if reason is None:
                chosen = name
                break
            notes.append(f"{BENCHMARKS[name].title}: {reason}")
        planned.append(Planned(group=group, benchmark=chosen, notes=notes))
    return planned


def plan_world(world_root: str | Path) -> list[Planned]:
    """Which world sets exist under ``world_root`` (``benchmark``: the split), with a note for the others."""
    planned = []
    for group, split in WORLD_SETS.items():
        json_path = Path(world_split_paths(world_root, split).panoptic_json)
        present = json_path.is_file()
        notes = (
            []
            if present
            else [
                f"{json_path} not found (`make demo`, or `omtseg test --config configs/eval/{group}.yaml`, "
                "writes it)"
            ]
        )
        planned.append(Planned(group=group, benchmark=split if present else None, notes=notes))
    return planned


def evaluate_world(
    ckpt: str | Path,
    split: str,
    *,
    world_root: str | Path,
    log_dir: str | Path = "outputs/eval",
    batch_size: int = 20,
    accelerator: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, float], int]:
    """Test ``ckpt`` on one split of the open-vocabulary world at the images' own size (PQ and mIoU, per
    class group); returns the logged metrics without ``test/`` and the number of images."""
    module = OMTSegModule.load_from_checkpoint(ckpt, map_location="cpu", eval_tasks=("panoptic", "semantic"))
    data = PanopticDataModule(
        root=str(world_root),
        test=world_split_paths("", split),
        eval_size=None,
        eval_batch_size=batch_size,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=CSVLogger(str(log_dir), name=f"world_{split}"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    logged = trainer.test(module, datamodule=data, verbose=False)[0]
    metrics = {key.removeprefix("test/"): float(value) for key, value in logged.items()}
    return metrics, len(data.datasets["test"])


def evaluate(
    ckpt: str | Path,
    benchmark: str,
    *,
    root: str | Path | None = None,
    log_dir: str | Path = "outputs/eval",
    split: str = "val",
    eval_size: int | None = 640,
    batch_size: int = 1,
    num_workers: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, float], int]:
    """Test ``ckpt`` on one benchmark; returns the logged metrics (``"miou"``, ``"pq"`` ..., percent)
    without the ``test/`` prefix, and the number of images.

    Raises:
        FileNotFoundError: the benchmark layout is missing.
    """
    # The saved config rebuilds the model; eval_tasks overrides it with what this benchmark can score.
    tasks = benchmark_tasks(benchmark)
    module = OMTSegModule.load_from_checkpoint(ckpt, map_location="cpu", eval_tasks=tasks)
    data = ZeroShotDataModule(
        benchmark=benchmark,
        root=None if root is None else str(root),
        split=split,
        eval_size=eval_size,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=CSVLogger(str(log_dir), name=benchmark),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    logged = trainer.test(module, datamodule=data, verbose=False)[0]
    assert data.dataset is not None
    return {key.removeprefix("test/"): float(value) for key, value in logged.items()}, len(data.dataset)


def _cell(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def results_table(groups: dict[str, dict[str, Any]], checkpoint: str) -> str:
    """The paper's columns as a Markdown table (``–`` where skipped), followed by the skip reasons."""
    headers = [h for h, _, _ in COLUMNS]
    cells = [_cell(groups.get(g, {}).get("metrics", {}).get(m)) for _, g, m in COLUMNS]
    lines = [
        "| checkpoint | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(headers),
        f"| {checkpoint} | " + " | ".join(cells) + " |",
        "",
        "mIoU on A-847 ... PAS-20; PQ and AP on ADE20K-150 panoptic; percent.",
    ]
    world = [g for g in WORLD_SETS if groups.get(g, {}).get("benchmark") is not None]
    if world:
        lines += [
            "",
            "Open-vocabulary world (synthetic, trained on its seen classes; percent):",
            "",
            "| set | " + " | ".join(h for h, _ in WORLD_COLUMNS) + " |",
            "|---|" + "---:|" * len(WORLD_COLUMNS),
        ]
        for g in world:
            metrics = groups[g].get("metrics", {})
            lines.append(
                f"| {WORLD_SETS[g]} | " + " | ".join(_cell(metrics.get(m)) for _, m in WORLD_COLUMNS) + " |"
            )
    notes = [(g, n) for g, r in groups.items() for n in r.get("notes", []) if g not in WORLD_SETS]
    if notes:
        lines += ["", "Skipped or partial:"] + [f"- {group}: {note}" for group, note in notes]
    return "\n".join(lines) + "\n"


def run(
    ckpt: str | Path,
    out: str | Path,
    *,
    root: str | Path | None = None,
    world_root: str | Path | None = None,
    **evaluate_kw: Any,
) -> dict[str, Any]:
    """Evaluate ``ckpt`` on every benchmark present under ``root``; write ``results.{md,json}`` in ``out``.

    Args:
        ckpt: a ``.ckpt`` written by ``omtseg fit``.
        out: output folder.
        root: datasets root (default ``$OMTSEG_DATASETS`` or ``data/``).
        world_root: where the open-vocabulary world lies (default ``<root>/world``).
        **evaluate_kw: passed to :func:`evaluate` (``eval_size``, ``batch_size``, ``num_workers``,
            ``accelerator``, ``progress``, ``split``).

    Returns:
        The content of ``results.json``: ``{"checkpoint", "root", "groups": {group: {"benchmark",
        "metrics", "images", "seconds", "notes"}}, "table"}``.

    Raises:
        FileNotFoundError: no benchmark at all is present (nothing to evaluate), or no checkpoint.
        ValueError: the checkpoint holds no model config (see :func:`omtseg.checkpoint.check_checkpoint`).
    """
    out = Path(out)
    ckpt = Path(ckpt)
    check_checkpoint(ckpt, need_model_config=True)
    planned = plan(root, split=evaluate_kw.get("split", "val"))
    world_root = Path(world_root) if world_root is not None else datasets_root(root) / "world"
    world = plan_world(world_root)
    if all(p.benchmark is None for p in planned + world):
        raise FileNotFoundError(
            f"No zero-shot benchmark is prepared under {datasets_root(root)} (set --root or "
            f"${DATASETS_ENV}); build them with `omtseg prepare <benchmark> --src RAW --dst ROOT`.\n"
            + "\n".join(n for p in planned + world for n in p.notes)
        )
    groups: dict[str, dict[str, Any]] = {}
    for p in planned:
        entry: dict[str, Any] = {"benchmark": p.benchmark, "metrics": {}, "notes": list(p.notes)}
        if p.benchmark is not None:
            start = time.perf_counter()
            entry["metrics"], entry["images"] = evaluate(
                ckpt, p.benchmark, root=root, log_dir=out / "logs", **evaluate_kw
            )
            entry["seconds"] = round(time.perf_counter() - start, 2)
        groups[p.group] = entry
    for p in world:
        entry = {"benchmark": p.benchmark, "metrics": {}, "notes": list(p.notes)}
        if p.benchmark is not None:
            start = time.perf_counter()
            entry["metrics"], entry["images"] = evaluate_world(
                ckpt,
                p.benchmark,
                world_root=world_root,
                log_dir=out / "logs",
                accelerator=evaluate_kw.get("accelerator", "auto"),
                progress=evaluate_kw.get("progress", True),
            )
            entry["seconds"] = round(time.perf_counter() - start, 2)
        groups[p.group] = entry
    table = results_table(groups, ckpt.name)
    results = {"checkpoint": str(ckpt), "root": str(datasets_root(root)), "groups": groups, "table": table}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    save_json(results, out / "results.json", indent=2)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg eval-all``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="omtseg eval-all",
        description="Zero-shot evaluation of a checkpoint on every prepared benchmark (A-847, PC-459, A-150, "
        "PC-59, PAS-20 mIoU; ADE20K-150 PQ and AP); writes OUT/results.md and OUT/results.json.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `omtseg fit`")
    parser.add_argument("--out", default="outputs/eval", help="output folder (default outputs/eval)")
    parser.add_argument("--root", default=None, help=f"datasets root (default ${DATASETS_ENV} or data/)")
    parser.add_argument(
        "--world-root", default=None, help="open-vocabulary world's folder (default ROOT/world)"
    )
    parser.add_argument("--eval-size", type=int, default=640, help="long side of test images, pixels")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    # Missing checkpoints or datasets raise errors that say how to fix them; `omtseg` prints them in one line.
    results = run(
        args.ckpt,
        args.out,
        root=args.root,
        world_root=args.world_root,
        eval_size=args.eval_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        accelerator=args.accelerator,
        progress=not args.quiet,
    )
    print(results["table"], end="")
    print(f"Written {Path(args.out) / 'results.md'} and {Path(args.out) / 'results.json'}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
