"""``omtseg pretrain``: BEiT-3-style masked data modeling, saved as an official unilm checkpoint.

    omtseg pretrain --config configs/pretrain/world_tiny.yaml [--out FILE] [--ckpt_path last] [overrides]

Runs LightningCLI ``fit`` on :class:`~omtseg.lit_pretrain.BEiT3PretrainModule` (any LightningCLI override
works; ``--ckpt_path last`` resumes step, optimizer and schedule), then writes the encoder in the official
format to ``--out`` (default ``<trainer.default_root_dir>/beit3_pretrained.pth``), the file segmentation
configs take as ``model.backbone_weights``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

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


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="omtseg pretrain",
        description="BEiT-3 masked data modeling; writes an official-format .pth (other options go to "
        "LightningCLI fit: --config, --ckpt_path last, --trainer.max_steps ...).",
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the pretrained .pth")
    known, rest = parser.parse_known_args(list(argv))
    if "--config" not in rest and not any(a.startswith("--config=") for a in rest):
        parser.error("give a pre-training config, e.g. --config configs/pretrain/world_tiny.yaml")
    cli = build_pretrain_cli(["fit", *rest])
    module = cli.model
    if not isinstance(module, BEiT3PretrainModule):
        raise ValueError(f"The config's model is {type(module).__name__}, not a BEiT3PretrainModule.")
    out = known.out or Path(cli.trainer.default_root_dir) / "beit3_pretrained.pth"
    module.export(out)
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    print(f"Pretrained BEiT-3 written to {out} ({metrics})")
    return 0
