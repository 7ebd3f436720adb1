"""The ``omtseg`` command: LightningCLI's ``fit|validate|test|predict`` and the table of the other commands.

``omtseg <name> ...`` for a name in :data:`COMMANDS` runs that module's ``main`` (``omtseg/commands/``),
imported only then, so ``omtseg fit`` loads nothing of the zero-shot, prepare or demo code.

Configs are YAML files split by concern (``configs/model``, ``configs/data``, ``configs/trainer``) that
top-level recipes compose by relative path (``model: model/omtseg_tiny.yaml``). They are read in
jsonargparse's ``omegaconf+`` mode: ``${trainer.max_steps}`` interpolations resolve on the merged config,
so a model file may derive values from the trainer file of the same recipe.

The prediction writer is always present (``--prediction_writer.output_dir``); it only acts in ``predict``.
``--vocabulary_file`` gives the classes to segment in ``predict`` as a text file (see
:func:`omtseg.data.vocabulary.read_class_list`); ``--data.predict_class_names`` gives them on the command
line. ``--captioner_ckpt`` (a captioner saved by :func:`omtseg.checkpoint.save_captioner` for the same
segmenter) adds a caption to every predicted segment, in ``panoptic.json`` and in the overlays.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from omtseg.callbacks import PanopticPredictionWriter
from omtseg.checkpoint import check_checkpoint
from omtseg.data.vocabulary import read_class_list
from omtseg.lit_module import OMTSegModule

COMMANDS: dict[str, str] = {
    "demo": "omtseg.commands.demo",
    "ablate": "omtseg.commands.ablate",
    "eval-all": "omtseg.commands.eval_all",
    "prepare": "omtseg.commands.prepare",
    "pretrain": "omtseg.commands.pretrain",
    "segment": "omtseg.commands.segment",
    "app": "omtseg.commands.app",
}
"""``omtseg`` commands beside LightningCLI's: name -> module with ``main(argv) -> exit status``."""

TRAINER_DEFAULTS: dict[str, list[dict[str, Any]]] = {
    # Paths follow the run's trainer.default_root_dir (interpolations resolve on the merged config).
    "logger": [
        {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "${....default_root_dir}", "name": "csv"},
        },
        {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "${....default_root_dir}", "name": "tensorboard"},
        },
    ],
    "callbacks": [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": "${....default_root_dir}/checkpoints",
                "filename": "best-{step}",
                "monitor": "val/pq",
                "mode": "max",
                "save_top_k": 1,
            },
        },
        {
            # `last.ckpt` at every validation (every epoch's end when validation counts epochs), so an
            # interrupted run resumes from its latest validated state.
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": "${....default_root_dir}/checkpoints",
                "every_n_train_steps": "${....val_check_interval}",
                "save_top_k": 0,
                "save_last": True,
            },
        },
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
    ],
}
"""The loggers and callbacks of every run, whatever its trainer file (``configs/trainer/*.yaml`` hold the
run values: device, precision, length); a trainer file or the command line may still replace them."""


class OMTSegCLI(LightningCLI):
    """LightningCLI over :class:`OMTSegModule` and any ``LightningDataModule`` (``data.class_path``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
        parser.add_lightning_class_args(PanopticPredictionWriter, "prediction_writer")
        parser.add_argument(
            "--vocabulary_file",
            type=str | None,
            default=None,
            help="Text file of the classes to segment in predict (one per line, 'a, b' = synonyms, "
            "'stuff: sky' = a stuff class); sets data.predict_class_names/predict_stuff_names.",
        )
        parser.add_argument(
            "--captioner_ckpt",
            type=str | None,
            default=None,
            help="Captioner checkpoint (omtseg.checkpoint.save_captioner) for the segmenter of "
            "--ckpt_path: predict then captions every segment; sets prediction_writer.captioner_ckpt.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Lightning's own names for checkpoints of this run ("last", "best") are not files to check.
        if config.get("ckpt_path") and config.ckpt_path not in ("last", "best", "hpc", "registry"):
            check_checkpoint(config.ckpt_path)
        trainer = config.trainer
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            # The configs ship a RichProgressBar; asking for no bar should not be an error.
            trainer.callbacks = [c for c in trainer.callbacks if not c.class_path.endswith("ProgressBar")]
        if config.get("captioner_ckpt"):
            if not Path(config.captioner_ckpt).is_file():
                raise FileNotFoundError(
                    f"Captioner checkpoint not found: {config.captioner_ckpt}; give the captioner.ckpt that "
                    "`omtseg demo` (or omtseg.checkpoint.save_captioner) wrote."
                )
            config.prediction_writer.captioner_ckpt = config.captioner_ckpt
        if not config.get("vocabulary_file"):
            return
        things, stuff = read_class_list(config.vocabulary_file)
        data = config.data.init_args
        if "predict_class_names" not in data:
            raise ValueError(
                f"--vocabulary_file needs a datamodule with predict_class_names; "
                f"{config.data.class_path} has none."
            )
        data.predict_class_names, data.predict_stuff_names = things, stuff


def build_cli(args: ArgsType = None, *, run: bool = True) -> OMTSegCLI:
    """Parse ``args`` (``sys.argv`` when None), build the parts and, with ``run``, run the subcommand.

    Args:
        args: command-line arguments, e.g. ``["fit", "--config", "configs/demo.yaml"]``; with ``run=False``
            give them without a subcommand.
        run: run the subcommand; False only builds model, data and trainer.

    Returns:
        The CLI, whose ``trainer``, ``model`` and ``datamodule`` hold the state after the run.
    """
    return OMTSegCLI(
        OMTSegModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def run_command(argv: Sequence[str]) -> int | None:
    """Run ``omtseg <command> ...`` when ``argv[0]`` names one of :data:`COMMANDS`; returns its exit status,
    or None for every other command line (LightningCLI's ``fit``, ``test``, ``--help`` ...).

    A user's mistake (a missing file, a bad value) is one line on stderr and exit status 2; ``--debug``
    shows the traceback instead.
    """
    if not argv or argv[0] not in COMMANDS:
        return None
    name, rest = argv[0], [a for a in argv[1:] if a != "--debug"]
    command = importlib.import_module(COMMANDS[name])
    try:
        return int(command.main(rest) or 0)
    except (FileNotFoundError, ValueError) as e:
        if "--debug" in argv:
            raise
        print(f"omtseg {name}: error: {e}", file=sys.stderr)
        return 2


def main(args: ArgsType = None) -> None:
    """Console-script entry point (``omtseg``): a command of :data:`COMMANDS`, else LightningCLI."""
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and (code := run_command(argv)) is not None:
        raise SystemExit(code)
    build_cli(args)


if __name__ == "__main__":
    main()
