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

A recipe whose model is :data:`CAPTIONER_MODULE` (``configs/caption/*.yaml``) trains the segment captioner
instead, over a frozen segmenter checkpoint: ``omtseg fit|validate|test --config configs/caption/world.yaml``
runs :class:`CaptionCLI`, chosen by the first ``--config`` file; every other command line is the segmenter's.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from omtseg.callbacks import PanopticPredictionWriter
from omtseg.checkpoint import check_checkpoint, merge_module_config, read_checkpoint
from omtseg.data.vocabulary import read_class_list
from omtseg.lit_module import OMTSegModule

COMMANDS: dict[str, str] = {
    "demo": "omtseg.commands.demo",
    "ablate": "omtseg.commands.ablate",
    "eval-all": "omtseg.commands.eval_all",
    "prepare": "omtseg.commands.prepare",
    "pretrain": "omtseg.commands.pretrain",
    "segment": "omtseg.commands.segment",
    "caption": "omtseg.commands.caption",
    "export": "omtseg.commands.export",
    "calibrate": "omtseg.commands.calibrate",
    "probe": "omtseg.commands.probe",
    "app": "omtseg.commands.app",
}
"""``omtseg`` commands beside LightningCLI's: name -> module with ``main(argv) -> exit status``."""
DEBUG_ENV = "OMTSEG_DEBUG"
"""Set to 1 for tracebacks instead of one-line errors (as ``--debug``)."""

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


EVALUATING = ("validate", "test", "predict")
"""Subcommands that need trained weights (``--ckpt_path``) unless ``--allow_random_weights``."""
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
"""Lightning's own names for checkpoints of this run: not files to check."""
CAPTIONER_MODULE = "omtseg.lit_captioner.CaptionerModule"
"""A recipe whose ``model.class_path`` is this trains the captioner (:func:`build_caption_cli`)."""
CAPTION_TRAINER_DEFAULTS: dict[str, list[dict[str, Any]]] = {
    "logger": TRAINER_DEFAULTS["logger"],
    "callbacks": [
        {**c, "init_args": {**c["init_args"], "monitor": "val/cider_d"}}
        if "monitor" in c.get("init_args", {})
        else c
        for c in TRAINER_DEFAULTS["callbacks"]
    ],
}
""":data:`TRAINER_DEFAULTS` for captioner runs: the best checkpoint is the one of highest val CIDEr-D."""


class OMTSegCLI(LightningCLI):
    """LightningCLI over :class:`OMTSegModule` and any ``LightningDataModule`` (``data.class_path``).

    With ``--ckpt_path FILE`` the module is built from the checkpoint's saved config (a recipe's model
    section is then a placeholder), plus the settings the command line gives: inference settings and tasks
    apply, an architecture that contradicts the checkpoint is refused
    (:func:`~omtseg.checkpoint.merge_module_config`), and ``--print_config`` prints that merged config.
    """

    _run_model: Any = None

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
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="Save checkpoints/last.ckpt every N optimizer steps, so `--ckpt_path last` resumes from at "
            "most N steps back (default: at every validation).",
        )
        parser.add_argument(
            "--allow_random_weights",
            type=bool,
            default=False,
            help="Let validate/test/predict run without --ckpt_path, on randomly initialised weights.",
        )
        parser.add_argument(
            "--captioner_ckpt",
            type=str | None,
            default=None,
            help="Captioner checkpoint (omtseg.checkpoint.save_captioner) for the segmenter of "
            "--ckpt_path: predict then captions every segment; sets prediction_writer.captioner_ckpt.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        given = sys.argv[1:] if args is None else args
        argv: list[str] = list(given) if isinstance(given, (list, tuple)) else []
        printing = [a for a in argv if a.split("=", 1)[0] == "--print_config"]
        if printing:
            # Printed below, once the checkpoint's config is merged: the printed config is the one that runs.
            self.config = parser.parse_args([a for a in argv if a not in printing])
        else:
            with warnings.catch_warnings():
                # omtseg's own commands (demo, ablate, calibrate) build runs from Python while their own
                # arguments are in sys.argv: the args given are the ones meant, the warning is noise.
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
                super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if subcommand and _checkpoint_file(config):
            # omtseg's check (a clear message) comes before anything reads the file.
            check_checkpoint(config.ckpt_path)
            saved = read_checkpoint(config.ckpt_path, header_only=True).get("hyper_parameters") or {}
            if saved and argv:
                keys = _given_module_keys(argv[argv.index(subcommand) + 1 :])
                merged = merge_module_config(saved, config.model.as_dict(), keys, path=config.ckpt_path)
                self.config = parser.parse_object({subcommand: {"model": merged}}, self.config)
                self._run_model = copy.deepcopy(self.config[subcommand].model)
        if printing:
            if self._run_model is None:
                parser.parse_args(argv)  # jsonargparse prints and exits
            dumped = yaml.safe_load(parser.dump(self.config, skip_none=False))
            print(yaml.safe_dump(dumped[subcommand] if subcommand else dumped, sort_keys=False), end="")
            raise SystemExit(0)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self._run_model is not None:
            # LightningCLI has put the checkpoint's saved config back over the settings this run gives.
            config.model = self._run_model
        if self.subcommand in EVALUATING and not config.get("ckpt_path") and not config.allow_random_weights:
            raise ValueError(
                f"omtseg {self.subcommand} without --ckpt_path would run randomly initialised weights; give "
                "--ckpt_path with a checkpoint written by `omtseg fit` (or --allow_random_weights to run "
                "them anyway)."
            )
        trainer = config.trainer
        if self.subcommand == "predict":
            # Prediction logs nothing: no logger folders or saved config under default_root_dir, so a run
            # from another directory writes only its --prediction_writer.output_dir.
            trainer.logger = False
            self.save_config_callback = None
        if config.get("checkpoint_every_n_steps") is not None:
            _set_checkpoint_interval(trainer, config.checkpoint_every_n_steps)
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


class CaptionCLI(LightningCLI):
    """LightningCLI over :class:`~omtseg.lit_captioner.CaptionerModule` and a region-caption datamodule
    (:class:`~omtseg.data.caption_datamodule.RegionCaptionDataModule`).

    The datamodule's ``class_names`` become the module's (the vocabulary the frozen segmenter runs with), and
    the captioner's config its ``captioner_arguments``, so that every checkpoint is a captioner checkpoint
    that ``omtseg caption --captioner`` and ``Segmenter.from_checkpoint(..., captioner=)`` load.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in CAPTION_TRAINER_DEFAULTS.items()})
        parser.link_arguments("data", "model.init_args.class_names", _class_names, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        from omtseg.lit_captioner import captioner_arguments

        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in EVALUATING and not config.get("ckpt_path"):
            raise ValueError(
                f"omtseg {self.subcommand} of a captioner needs --ckpt_path, a checkpoint that `omtseg fit "
                "--config configs/caption/...` wrote."
            )
        captioner = config.model.init_args.captioner
        config.model.init_args.captioner_arguments = captioner_arguments(captioner.init_args.as_dict())
        trainer = config.trainer
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            trainer.callbacks = [c for c in trainer.callbacks if not c.class_path.endswith("ProgressBar")]


def _class_names(data: Any) -> list[str]:
    """The vocabulary a region-caption datamodule runs the segmenter with."""
    names = getattr(data, "class_names", None)
    if names is None:
        raise ValueError(
            f"The captioner takes the segmenter's vocabulary from the datamodule's class_names, which "
            f"{type(data).__name__} has not; use omtseg.data.caption_datamodule.RegionCaptionDataModule."
        )
    return list(names)


def _first_config(argv: Sequence[str]) -> Path | None:
    """The first ``--config`` file of a command line, if any."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def trains_captioner(argv: Sequence[str]) -> bool:
    """True when the first ``--config`` file's model (inline, or the file it names) is the captioner's."""
    path = _first_config(argv)
    recipe = _yaml_file(path) if path is not None else None
    model = recipe.get("model") if isinstance(recipe, dict) else None
    if isinstance(model, str) and path is not None:
        model = _yaml_file(path.parent / model)  # relative to the recipe, as jsonargparse reads it
    return isinstance(model, dict) and model.get("class_path") == CAPTIONER_MODULE


def _yaml_file(path: Path) -> Any:
    """A YAML file's content; None for a missing or malformed file (LightningCLI then reports it)."""
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def _checkpoint_file(config: Any) -> bool:
    """True when the run names a checkpoint file (not one of :data:`LIGHTNING_CKPT_NAMES`)."""
    path = config.get("ckpt_path")
    return bool(path) and path not in LIGHTNING_CKPT_NAMES


def _set_checkpoint_interval(trainer: Any, steps: int) -> None:
    """Make the ``last.ckpt`` checkpoint callback of a parsed trainer config save every ``steps`` steps."""
    if steps < 1:
        raise ValueError(f"--checkpoint_every_n_steps must be >= 1, got {steps}.")
    last = [
        c
        for c in trainer.get("callbacks") or []
        if c.class_path.endswith("ModelCheckpoint") and c.init_args.get("save_last")
    ]
    if not last:
        raise ValueError(
            "--checkpoint_every_n_steps needs the ModelCheckpoint with save_last of omtseg's trainer "
            "defaults, but this run's trainer.callbacks replace it; set every_n_train_steps there instead."
        )
    for callback in last:
        callback.init_args.every_n_train_steps = steps
        callback.init_args.every_n_epochs = None


def _given_module_keys(argv: Sequence[str]) -> list[tuple[str, ...]]:
    """The module settings a command line gives (``--model.model.init_args.object_threshold 0.5`` ->
    ``("model", "object_threshold")``; ``--model file.yaml`` -> ``()``), for
    :func:`~omtseg.checkpoint.merge_module_config`."""
    keys = []
    for arg in argv:
        if arg == "--model" or arg.startswith(("--model.", "--model=")):
            name = arg[2:].split("=", 1)[0]
            keys.append(tuple(part for part in name.split(".")[1:] if part != "init_args"))
    return keys


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


def build_caption_cli(args: ArgsType = None, *, run: bool = True) -> CaptionCLI:
    """:func:`build_cli` for a captioner recipe (``configs/caption/*.yaml``); see :class:`CaptionCLI`."""
    from omtseg.lit_captioner import CaptionerModule

    return CaptionCLI(
        CaptionerModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def debugging(argv: Sequence[str]) -> bool:
    """True when the user asks for tracebacks: ``--debug`` on the command line or ``OMTSEG_DEBUG=1``."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_error(command: str, error: Exception) -> int:
    """Print a user's mistake as one line on stderr; returns exit status 2."""
    print(f"omtseg {command}: error: {error} (--debug shows the traceback)", file=sys.stderr)
    return 2


def run_command(argv: Sequence[str]) -> int | None:
    """Run ``omtseg <command> ...`` when ``argv[0]`` names one of :data:`COMMANDS`; returns its exit status,
    or None for every other command line (LightningCLI's ``fit``, ``test``, ``--help`` ...).

    A user's mistake (a missing file, a bad value) is one line on stderr and exit status 2; ``--debug``
    (or ``OMTSEG_DEBUG=1``) shows the traceback instead.
    """
    if not argv or argv[0] not in COMMANDS:
        return None
    name, rest = argv[0], [a for a in argv[1:] if a != "--debug"]
    command = importlib.import_module(COMMANDS[name])
    try:
        return int(command.main(rest) or 0)
    except (FileNotFoundError, ValueError) as e:
        if debugging(argv):
            raise
        return user_error(name, e)


def commands_help() -> str:
    """The commands of :data:`COMMANDS`, each with the first line of its module's docstring (read, not
    imported, so ``omtseg --help`` stays fast)."""
    lines = ["", "other commands (omtseg <command> --help):"]
    for name, module in COMMANDS.items():
        spec = importlib.util.find_spec(module)
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) if spec and spec.origin else None
        paragraph = " ".join((doc or "").split("\n\n", 1)[0].split())
        summary = paragraph.split(": ", 1)[-1].split(". ", 1)[0].rstrip(".")
        lines.append(f"  {name:<10} {summary}")
    return "\n".join(lines)


def main(args: ArgsType = None) -> None:
    """Console-script entry point (``omtseg``): a command of :data:`COMMANDS`, else LightningCLI.

    omtseg's errors for bad input (``ValueError``, ``FileNotFoundError``) end the command with one line on
    stderr and exit status 2; ``--debug`` or ``OMTSEG_DEBUG=1`` lets the traceback through.
    """
    argv = sys.argv[1:] if args is None else args
    if not isinstance(argv, list):
        build_cli(args)
        return
    if (code := run_command(argv)) is not None:
        raise SystemExit(code)
    if argv[:1] in (["-h"], ["--help"]):
        try:
            build_cli(args)  # LightningCLI's help (fit, validate, test, predict) ...
        finally:
            print(commands_help())  # ... then the others
    debug = debugging(argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        if args is None:
            sys.argv[1:], args = argv, None
        else:
            args = argv
    try:
        if trains_captioner(argv):
            build_caption_cli(args)
            return
        cli = build_cli(args)
    except (FileNotFoundError, ValueError) as e:
        if debug:
            raise
        raise SystemExit(user_error(argv[0] if argv else "", e)) from None
    writers = [c for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, PanopticPredictionWriter)]
    if cli.subcommand == "predict" and any(w.failed for w in writers):
        raise SystemExit(1)  # the writer has named every skipped file


if __name__ == "__main__":
    main()
