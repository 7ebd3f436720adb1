"""``make ablate``: the full model, the paper's three ablations and the random-backbone baseline, on the
open-vocabulary world, over several seeds.

    omtseg ablate [--config configs/world.yaml] [--backbone weights/beit3_tiny_world.pth]
                  [--seeds 0 1 2] [--jobs 2] [--out outputs/ablate] [--variants NAME ...]

Each variant is the recipe plus one overlay of ``configs/ablation/`` (none for the full model), with the
pretrained BEiT-3 of ``omtseg demo``/``omtseg pretrain`` (made first when missing), except the baseline,
whose BEiT-3 is random: same pipeline, a trunk that never read a caption. Every run is ``omtseg fit`` on the
seen classes, then ``omtseg test`` of its best checkpoint on the seen test split, unseen compositions and
novel concepts, then ``omtseg calibrate`` (the seen-class penalty chosen on the world's ``unseen_val``
images) and the unseen and novel tests again with that penalty (the ``(cal.)`` columns). ``results.md``
holds mean ± std over seeds of PQ and mIoU per class group (also printed), ``results.json`` every run,
one run folder per variant and seed. ``--jobs 2`` runs two trainings at once (one thread each), which a
2-core machine finishes in about half the time.
"""

from __future__ import annotations

import argparse
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from omtseg.commands.pretrain import ensure_pretrained
from omtseg.commands.runs import calibrate, fit_and_test, zero_shot_test
from omtseg.io import save_json

VARIANTS: dict[str, str | None] = {
    "full": None,
    "no cross-modal attention": "no_cross_modal.yaml",
    "no visual adapter": "no_adapter.yaml",
    "no prompt tuning": "no_prompt_tuning.yaml",
    "random backbone (baseline)": None,
    "sequential text attention": "text_sequential.yaml",
    "per-name text attention": "text_per_name.yaml",
}
"""Variant name -> overlay file in the ablation folder (None: the recipe as is)."""
BASELINE = "random backbone (baseline)"
PAPER_VARIANTS = list(VARIANTS)[:5]
"""What ``make ablate`` runs: the full model, the paper's three ablations and the random-backbone baseline;
the text attention modes (``make ablate-text``) compare with the full model's ``one_way``."""

COLUMNS = (
    ("PQ seen", "pq_seen"),
    ("PQ unseen", "pq_unseen"),
    ("PQ novel", "pq_novel"),
    ("mIoU seen", "miou_seen"),
    ("mIoU unseen", "miou_unseen"),
    ("mIoU novel", "miou_novel"),
    ("penalty", "seen_class_penalty"),
    ("PQ unseen (cal.)", "pq_unseen_cal"),
    ("PQ novel (cal.)", "pq_novel_cal"),
)


def run_one(config: Path, overlay: Path | None, backbone: Path | None, seed: int, run_dir: Path) -> dict:
    """One variant and seed: fit on seen classes, test seen / unseen / novel; returns the group metrics."""
    torch.set_num_threads(1)  # the tiny model's small ops: one thread measured ~10x less CPU per step
    args = ["--config", str(config)]
    if overlay is not None:
        args += ["--config", str(overlay)]
    if backbone is not None:
        args += ["--model.backbone_weights", str(backbone)]
    args += ["--seed_everything", str(seed), "--trainer.enable_progress_bar", "false"]
    result = fit_and_test(args, run_dir)
    seen = result["test"]
    unseen = zero_shot_test(args, result["best_checkpoint"], run_dir, "unseen")
    novel = zero_shot_test(args, result["best_checkpoint"], run_dir, "novel")
    # Calibrated stacking, the penalty chosen per run on unseen_val images (none of the test images).
    penalty = calibrate(args, result["best_checkpoint"]).best
    unseen_cal, novel_cal = unseen, novel
    if penalty:
        unseen_cal, novel_cal = (
            zero_shot_test(args, result["best_checkpoint"], run_dir, s, seen_class_penalty=penalty)
            for s in ("unseen", "novel")
        )
    metrics = {
        "pq_seen": seen.get("test/pq_seen", seen.get("test/pq")),
        "miou_seen": seen.get("test/miou_seen", seen.get("test/miou")),
        "pq_unseen": unseen.get("test/pq_unseen"),
        "miou_unseen": unseen.get("test/miou_unseen"),
        "pq_novel": novel.get("test/pq_novel"),
        "miou_novel": novel.get("test/miou_novel"),
        "seen_class_penalty": penalty,
        "pq_unseen_cal": unseen_cal.get("test/pq_unseen"),
        "pq_novel_cal": novel_cal.get("test/pq_novel"),
    }
    return {"metrics": metrics, "best_checkpoint": result["best_checkpoint"], "fit_s": result["fit_s"]}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per variant and column: (mean, sample std) over seeds (std 0 for one seed, NaN when missing)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for variant, results in runs.items():
        out[variant] = {}
        for _, key in COLUMNS:
            values = [r["metrics"][key] for r in results if r["metrics"].get(key) is not None]
            mean = statistics.fmean(values) if values else math.nan
            std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else math.nan)
            out[variant][key] = (mean, std)
    return out


def results_table(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    """A Markdown table: mean ± std (percent, one decimal) per variant and column."""
    lines = [
        "| variant | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for variant, cells in summary.items():
        shown = ["-" if math.isnan(m) else f"{m:.1f} ± {s:.1f}" for m, s in (cells[k] for _, k in COLUMNS)]
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``omtseg ablate``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="omtseg ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/world.yaml"), help="recipe YAML")
    parser.add_argument(
        "--pretrain_config",
        type=Path,
        default=Path("configs/pretrain/world_tiny.yaml"),
        help="pre-training recipe of the backbone (used when --backbone is missing or stale)",
    )
    parser.add_argument("--backbone", type=Path, default=Path("weights/beit3_tiny_world.pth"))
    parser.add_argument("--out", type=Path, default=Path("outputs/ablate"), help="output folder")
    parser.add_argument("--ablation_dir", type=Path, default=Path("configs/ablation"), help="overlays")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed_everything values")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    parser.add_argument("--variants", nargs="+", default=PAPER_VARIANTS, choices=list(VARIANTS))
    args = parser.parse_args(argv)
    if not args.config.is_file():
        raise FileNotFoundError(f"Config not found: {args.config}. Give a recipe such as configs/world.yaml.")
    missing = [f for f in VARIANTS.values() if f is not None and not (args.ablation_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Ablation overlays {missing} not in {args.ablation_dir}; pass --ablation_dir."
        )
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: run at least one training at a time.")
    needs_backbone = any(v != BASELINE for v in args.variants)
    backbone: dict[str, Any] = {"metrics": {}}
    if needs_backbone:
        backbone = ensure_pretrained(args.pretrain_config, args.backbone, half=True)
    jobs: dict[tuple[str, int], Any] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for variant in args.variants:
            overlay = VARIANTS[variant]
            for seed in args.seeds:
                jobs[variant, seed] = pool.submit(
                    run_one,
                    args.config,
                    None if overlay is None else args.ablation_dir / overlay,
                    None if variant == BASELINE else args.backbone,
                    seed,
                    args.out / f"{variant.split(' (')[0].replace(' ', '_')}_seed{seed}",
                )
        runs = {v: [jobs[v, s].result() | {"seed": s} for s in args.seeds] for v in args.variants}
    table = results_table(summarize(runs))
    trunk = (
        f"BEiT-3 pretrained by {args.pretrain_config} (held-out masked-token accuracy "
        f"{backbone['metrics'].get('val/mlm_acc', math.nan):.2f}) except the baseline's"
        if needs_backbone
        else "the baseline's BEiT-3 random, never pretrained"
    )
    header = (
        f"# Ablations on the open-vocabulary world ({args.config}; seeds {args.seeds}; percent, "
        f"mean ± std over seeds)\n\nTrained on seen classes only; {trunk}.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(header + table + "\n")
    save_json({"backbone": backbone, "runs": runs}, args.out / "results.json", indent=1)
    print(f"\n{table}\n\nWritten to {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
