"""``omtseg pretrain``: BEiT-3-style masked data modeling, saved as an official unilm checkpoint.

    omtseg pretrain --config configs/pretrain/world_tiny.yaml [--out FILE] [--half] [--ckpt_path last]
                    [overrides]

Runs LightningCLI ``fit`` on :class:`~omtseg.lit_pretrain.BEiT3PretrainModule` (any LightningCLI override
works; ``--ckpt_path last`` resumes step, optimizer and schedule), then writes the encoder in the official
format to ``--out`` (default ``<trainer.default_root_dir>/beit3_pretrained.pth``), the file segmentation
configs take as ``model.backbone_weights``, and beside it ``<out>.json``: the config file's sha256, the
overrides and the final validation metrics, so a later run (``omtseg demo``) can tell whether the file is
what this config makes (:func:`ensure_pretrained`). ``--half`` writes the encoder alone in float16 (the
repository ships the world's tiny trunk so, 8.7 MB: ``make pretrain`` remakes it).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from omtseg.io import load_json, save_json
from omtseg.lit_pretrain import BEiT3PretrainModule


def build_pretrain_cli(args: Sequence[str], *, run: bool = True) -> LightningCLI:
    """LightningCLI over the pre-training module and any datamodule (``args`` start with a subcommand)."""
    return LightningCLI(
        BEiT3PretrainModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=list(args),
        run=run,
    )


def _record(config: Path, overrides: Sequence[str], half: bool) -> dict[str, Any]:
    return {
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "overrides": list(overrides),
        "half": half,
    }


def pretrain(config: Path, out: Path, overrides: Sequence[str] = (), *, half: bool = False) -> dict[str, Any]:
    """Pre-train with ``config`` (+ LightningCLI ``overrides``), write ``out`` and its ``.json`` record
    (``half``: the encoder alone in float16).

    Returns:
        The record: config sha256, overrides and ``metrics`` (the last ``val/*`` values).
    """
    if not config.is_file():
        raise FileNotFoundError(f"Pre-training config not found: {config}.")
    cli = build_pretrain_cli(["fit", "--config", str(config), *overrides])
    module = cli.model
    if not isinstance(module, BEiT3PretrainModule):
        raise ValueError(f"The config's model is {type(module).__name__}, not a BEiT3PretrainModule.")
    module.export(out, half=half)
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    record = {**_record(config, overrides, half), "metrics": metrics}
    save_json(record, out.with_suffix(".json"), indent=1)
    return record


def ensure_pretrained(
    config: Path, out: Path, overrides: Sequence[str] = (), *, half: bool = False
) -> dict[str, Any]:
    """Reuse ``out`` when its record says ``config`` (same bytes, same overrides, same precision) made it,
    else pre-train (a file written before records held the precision counts as float32)."""
    sidecar = out.with_suffix(".json")
    if out.is_file() and sidecar.is_file():
        record = load_json(sidecar)
        keys = ("config_sha256", "overrides", "half")
        found = {k: record.get(k, False if k == "half" else None) for k in keys}
        if found == _record(config, overrides, half):
            return {**record, "reused": True}
    return {**pretrain(config, out, overrides, half=half), "reused": False}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="omtseg pretrain",
        description="BEiT-3 masked data modeling (and, by weight, VLMo's image-text contrast and matching); "
        "writes an official-format .pth (other options go to LightningCLI fit: --ckpt_path last, "
        "--trainer.max_steps ...).",
    )
    parser.add_argument("--config", type=Path, required=True, help="e.g. configs/pretrain/world_tiny.yaml")
    parser.add_argument("--out", type=Path, default=None, help="where to write the pretrained .pth")
    parser.add_argument(
        "--half", action="store_true", help="write the encoder alone in float16 (no pre-training heads)"
    )
    known, rest = parser.parse_known_args(list(argv))
    out = known.out
    if out is None:
        cli = build_pretrain_cli(["--config", str(known.config), *rest], run=False)
        out = Path(cli.trainer.default_root_dir) / "beit3_pretrained.pth"
    record = pretrain(known.config, out, rest, half=known.half)
    print(f"Pretrained BEiT-3 written to {out} ({record['metrics']})")
    return 0
