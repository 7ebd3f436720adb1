"""``omtseg fit|validate|test|predict``: the LightningCLI entry point.

Configs are YAML files split by concern (``configs/model``, ``configs/data``, ``configs/trainer``) that
top-level recipes compose by relative path (``model: model/omtseg_tiny.yaml``). They are read in
jsonargparse's ``omegaconf+`` mode: ``${trainer.max_steps}`` interpolations resolve on the merged config,
so a model file may derive values from the trainer file of the same recipe.

The prediction writer is always present (``--prediction_writer.output_dir``); it only acts in ``predict``.
``--vocabulary_file`` gives the classes to segment in ``predict`` as a text file (see
:func:`read_vocabulary_file`); ``--data.predict_class_names`` gives them on the command line.
``--captioner_ckpt`` (a captioner saved by :func:`omtseg.caption_module.save_captioner` for the same
segmenter) adds a caption to every predicted segment, in ``panoptic.json`` and in the overlays.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from omtseg.callbacks import PanopticPredictionWriter
from omtseg.eval_all import run_extra_command
from omtseg.lit_module import OMTSegModule, check_checkpoint


def read_vocabulary_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Class names from a text file: one class per line, ``"tv, monitor"`` = one class with two names.

    A line starting with ``stuff:`` names a stuff class (amorphous regions: sky, grass); other lines name
    thing classes. Blank lines and lines starting with ``#`` are skipped.

    Returns:
        (thing names, stuff names), each entry a comma-separated synonym list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file names no class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Vocabulary file not found: {path}. Write one class name per line.")
    things, stuff = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("stuff:"):
            stuff.append(line[len("stuff:") :].strip())
        else:
            things.append(line)
    if not any(n.strip(" ,") for n in things + stuff):
        raise ValueError(
            f"Vocabulary file {path} names no class; write one class per line (\"tv, monitor\" for synonyms, "
            "\"stuff: sky\" for stuff)."
        )
    return things, stuff


class OMTSegCLI(LightningCLI):
    """LightningCLI over :class:`OMTSegModule` and any ``LightningDataModule`` (``data.class_path``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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
            help="Captioner checkpoint (omtseg.caption_module.save_captioner) for the segmenter of "
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
                    "omtseg.demo (or omtseg.caption_module.save_captioner) wrote."
                )
            config.prediction_writer.captioner_ckpt = config.captioner_ckpt
        if not config.get("vocabulary_file"):
            return
        things, stuff = read_vocabulary_file(config.vocabulary_file)
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


def main(args: ArgsType = None) -> None:
    """Console-script entry point (``omtseg``).

    ``omtseg prepare`` and ``omtseg eval-all`` are plain argparse commands (see :mod:`omtseg.eval_all`);
    everything else goes to LightningCLI.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and (code := run_extra_command(argv)) is not None:
        raise SystemExit(code)
    build_cli(args)


if __name__ == "__main__":
    main()
