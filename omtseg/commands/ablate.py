"""``make ablate``: the full model and the paper's three ablations, same recipe, budget and seed.

    omtseg ablate --config configs/demo.yaml --out outputs/ablate

Each variant is the recipe plus one overlay of ``configs/ablation/`` (none for the full model), trained
with ``omtseg fit`` and tested on its best checkpoint. Writes ``results.md`` (the table, also printed) and
``results.json`` under ``--out``, one run folder per variant.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from omtseg.commands.runs import fit_and_test
from omtseg.io import save_json

VARIANTS: dict[str, str | None] = {
    "full": None,
    "no cross-modal attention": "no_cross_modal.yaml",
    "no visual adapter": "no_adapter.yaml",
    "no prompt tuning": "no_prompt_tuning.yaml",
}
"""Variant name -> overlay file in the ablation folder (None: the recipe as is)."""

COLUMNS = (("PQ", "test/pq"), ("SQ", "test/sq"), ("RQ", "test/rq"), ("PQ_th", "test/pq_th"),
           ("PQ_st", "test/pq_st"), ("mIoU", "test/miou"))


def results_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the test metrics (percent, one decimal) of each variant."""
    header = "| variant | " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for variant, test in results.items():
        values = [test.get(key, math.nan) for _, key in COLUMNS]
        cells = ["-" if math.isnan(v) else f"{v:.1f}" for v in values]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config: Path, out: Path, ablation_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Train and test every variant; returns ``{variant: {"test", "best_checkpoint", "fit_s"}}``."""
    missing = [f for f in VARIANTS.values() if f is not None and not (ablation_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"Ablation overlays {missing} not in {ablation_dir}; pass --ablation_dir.")
    results: dict[str, Any] = {}
    for variant, overlay in VARIANTS.items():
        args = ["--config", str(config)]
        if overlay is not None:
            args += ["--config", str(ablation_dir / overlay)]
        result = fit_and_test([*args, *extra], out / variant.replace(" ", "_"))
        results[variant] = {k: result[k] for k in ("test", "best_checkpoint", "fit_s", "curve")}
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``omtseg ablate``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="omtseg ablate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="recipe YAML")
    parser.add_argument("--out", type=Path, default=Path("outputs/ablate"), help="output folder")
    parser.add_argument("--ablation_dir", type=Path, default=Path("configs/ablation"), help="overlays")
    parser.add_argument("--seed", type=int, default=None, help="seed_everything for every variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1)")
    args = parser.parse_args(argv)
    # The tiny model is made of small ops: one thread measured ~10x less CPU time per step than two.
    torch.set_num_threads(args.threads)
    if not args.config.is_file():
        raise FileNotFoundError(f"Config not found: {args.config}. Give a recipe such as configs/demo.yaml.")
    extra = ["--seed_everything", str(args.seed)] if args.seed is not None else []
    results = run(args.config, args.out, args.ablation_dir, extra)
    table = results_table({variant: r["test"] for variant, r in results.items()})
    header = f"# Ablations of {args.config} (test split, percent; same recipe, budget and seed)\n\n"
    (args.out / "results.md").write_text(header + table + "\n")
    save_json(results, args.out / "results.json", indent=1)
    print(f"\n{table}\n\nWritten to {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
