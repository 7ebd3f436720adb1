"""Training runs shared by ``omtseg demo`` and ``omtseg ablate``: fit, then test the best checkpoint.

Both go through the same CLI a user runs (``omtseg fit|test``), so a demo or an ablation measures exactly
what a user's run would.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from omtseg.checkpoint import check_checkpoint
from omtseg.cli import build_cli
from omtseg.evaluation.calibration import DEFAULT_GRID, CalibrationSweep, sweep_seen_penalty
from omtseg.lit_module import OMTSegModule


def learning_curve(metrics_csv: Path, key: str = "val/pq") -> list[dict[str, float]]:
    """The rows of a CSVLogger ``metrics.csv`` that hold ``key``: ``[{"epoch", "step", key}]``."""
    with metrics_csv.open() as f:
        return [
            {"epoch": int(r["epoch"]), "step": int(r["step"]), key: float(r[key])}
            for r in csv.DictReader(f)
            if r.get(key)
        ]


def zero_shot_test(
    config_args: list[str],
    ckpt: str,
    run_dir: Path,
    split: str,
    categories_json: Path | None = None,
    seen_class_penalty: float = 0.0,
) -> dict[str, float]:
    """``omtseg test`` of ``ckpt`` on one split of the open-vocabulary world (``test``, ``unseen``,
    ``novel``); returns the ``test/*`` metrics (``test/pq_novel`` ... for the class groups).

    ``categories_json`` prompts the split with another category list (reordered, or with distractors); the
    run's logs then go to ``test_<split>_<file stem>``. A ``seen_class_penalty`` (see
    :func:`calibrate`) is applied to the checkpoint's model; logs then go to ``..._calibrated``.
    """
    extra = [] if categories_json is None else ["--data.init_args.test_categories_json", str(categories_json)]
    name = f"test_{split}" if categories_json is None else f"test_{split}_{categories_json.stem}"
    if seen_class_penalty:
        extra += ["--model.model.init_args.seen_class_penalty", repr(float(seen_class_penalty))]
        name += "_calibrated"
    tested = build_cli(
        [
            "test", *config_args, "--ckpt_path", ckpt,
            "--data.init_args.world.test_split", split,
            "--trainer.default_root_dir", str(run_dir / name),
            *extra,
        ]
    )
    return {k: float(v) for k, v in tested.trainer.callback_metrics.items() if k.startswith("test/")}


def fit_and_test(config_args: list[str], run_dir: Path) -> dict[str, Any]:
    """Train with ``config_args`` (``--config`` files and overrides), then test the best checkpoint.

    Returns:
        ``{"best_checkpoint", "segmenter" (the trained OMTSeg), "data_root", "curve" (val/pq per validation),
        "test" (test/* metrics), "fit_s", "test_s"}``.
    """
    start = time.perf_counter()
    cli = build_cli(["fit", *config_args, "--trainer.default_root_dir", str(run_dir)])
    fit_s = time.perf_counter() - start
    # The checkpoint callback that monitors a metric (val/pq) holds the best model; the other one, "last".
    monitored = [c for c in cli.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    if not best:
        raise RuntimeError(f"Training in {run_dir} saved no best checkpoint; configure a val split.")
    (csv_logger,) = [lg for lg in cli.trainer.loggers if isinstance(lg, CSVLogger)]
    curve = learning_curve(Path(csv_logger.log_dir) / "metrics.csv")
    start = time.perf_counter()
    tested = build_cli(
        ["test", *config_args, "--ckpt_path", best, "--trainer.default_root_dir", str(run_dir / "test")]
    )
    test = {k: float(v) for k, v in tested.trainer.callback_metrics.items() if k.startswith("test/")}
    return {
        "best_checkpoint": best,
        "segmenter": cli.model.model,
        "data_root": str(cli.datamodule.root),
        "curve": curve,
        "test": test,
        "fit_s": fit_s,
        "test_s": time.perf_counter() - start,
    }




def calibrate(
    config_args: list[str], ckpt: str, split: str = "unseen_val", grid: Sequence[float] = DEFAULT_GRID
) -> CalibrationSweep:
    """Choose ``seen_class_penalty`` for ``ckpt`` on the world's ``split`` (labelled, with untrained
    classes), data as ``config_args`` configure it (:func:`omtseg.evaluation.calibration.sweep_seen_penalty`).

    Raises:
        ValueError: the checkpoint records no training names, or the split no seen and unseen segments.
    """
    check_checkpoint(Path(ckpt), need_model_config=True)
    model = OMTSegModule.load_from_checkpoint(ckpt, map_location="cpu").model
    if getattr(build_cli(config_args, run=False).datamodule, "world", None) is None:
        raise ValueError(
            "Calibration needs labelled images whose classes are grouped seen/unseen: give a recipe whose "
            "data is the open-vocabulary world (--config configs/world.yaml), or call "
            "omtseg.evaluation.calibration.sweep_seen_penalty with such batches."
        )
    cli = build_cli([*config_args, "--data.init_args.world.test_split", split], run=False)
    data = cli.datamodule
    data.prepare_data()
    data.setup("test")
    return sweep_seen_penalty(model, data.test_dataloader(), grid)
