"""``omtseg calibrate``: choose a checkpoint's seen-class penalty on images with untrained classes.

    omtseg calibrate --ckpt best.ckpt [--config configs/world.yaml] [--split unseen_val]
                     [--grid 0 0.5 1 1.5 2 3 4] [--out calibration.json] [--data.init_args.root ...]

A segmentation head trained on seen classes scores them above any name it never learned, even where the
image shows the other. Calibrated stacking lowers every seen class's logit by one constant at inference
(``seen_class_penalty``; :mod:`omtseg.evaluation.calibration`); this command tries each value of the grid on
the split's images (by default the open-vocabulary world's ``unseen_val``: unseen compositions among seen
classes, images apart from every test set), prints seen and unseen PQ for each, and picks the best harmonic
mean of the two. Apply it with ``--model.model.init_args.seen_class_penalty <value>`` on ``omtseg test`` or
``omtseg predict``, or ``Segmenter.from_checkpoint(...).model.seen_class_penalty = value``. Options this
command does not know go to the data configuration (``--data.init_args.root data/world``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from omtseg.commands.runs import calibrate
from omtseg.evaluation.calibration import DEFAULT_GRID
from omtseg.io import save_json


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg calibrate``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="omtseg calibrate",
        description="Choose seen_class_penalty for a checkpoint on validation images with untrained classes.",
    )
    parser.add_argument("--ckpt", required=True, help="segmenter checkpoint written by `omtseg fit`")
    parser.add_argument(
        "--config", type=Path, default=Path("configs/world.yaml"), help="recipe whose data to use"
    )
    parser.add_argument("--split", default="unseen_val", help="the world's split to calibrate on")
    parser.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_GRID), help="penalties to try")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON to write (default: beside the checkpoint)"
    )
    args, data_args = parser.parse_known_args(argv)
    if not args.config.is_file():
        raise FileNotFoundError(f"Config not found: {args.config}. Give a recipe such as configs/world.yaml.")
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"Checkpoint not found: {args.ckpt}. Give a .ckpt written by `omtseg fit`.")
    stray = [a for a in data_args if a.startswith("--") and not a.startswith("--data.")]
    if stray:
        raise ValueError(f"Unknown options {stray}; besides this command's own, only --data.* options apply.")
    sweep = calibrate(["--config", str(args.config), *data_args], args.ckpt, args.split, args.grid)
    out = args.out or Path(args.ckpt).with_name(Path(args.ckpt).stem + "_calibration.json")
    save_json(
        {"checkpoint": str(args.ckpt), "split": args.split, "best": sweep.best, "rows": list(sweep.rows)}, out
    )
    print(sweep.table())
    print(
        f"\nChosen seen_class_penalty: {sweep.best:g} (best harmonic mean of seen and "
        f"{sweep.unseen_group} PQ on {args.split}); written to {out}.\n"
        f"Apply it: omtseg test ... --ckpt_path {args.ckpt} "
        f"--model.model.init_args.seen_class_penalty {sweep.best:g}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
