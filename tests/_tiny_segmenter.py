"""A tiny random segmenter checkpoint, as ``omtseg fit`` writes one (saved config included), in seconds.

The demo recipe's model (configs/demo.yaml) with random weights and both panoptic thresholds at 0, so that
even an untrained model keeps queries and every image gets segments to write, draw and compare.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import numpy as np
import torch
from PIL import Image

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import add_segmenter_entries, save_captioner
from omtseg.cli import build_cli

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
IMAGE_SIZE = 64
"""The demo recipe's ``eval_size``: ``omtseg predict --config configs/demo.yaml`` resizes to it."""

RECIPE = [
    "--config", str(DEMO),
    "--model.model.init_args.num_decoder_layers", "2",
    "--model.model.init_args.object_threshold", "0.0",
    "--model.model.init_args.overlap_threshold", "0.0",
]
"""Command-line arguments of the recipe (shared with ``omtseg predict`` in the parity test)."""


def make_checkpoint(path: Path, seed: int = 0, eval_size: int | None = None) -> Path:
    """Write the checkpoint: the module's state and hyperparameters, and omtseg's entries (``eval_size``
    recorded when given, as ``omtseg fit`` records its data's)."""
    torch.manual_seed(seed)
    with mock.patch.object(sys, "argv", ["omtseg"]):  # pytest's own argv must not reach the CLI
        cli = build_cli([*RECIPE, "--trainer.logger", "false"], run=False)
    checkpoint = {
        "state_dict": cli.model.state_dict(),
        "hyper_parameters": dict(cli.model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    add_segmenter_entries(checkpoint, cli.model.model, None, eval_size=eval_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def make_images(folder: Path, count: int = 3, seed: int = 0) -> list[Path]:
    """``count`` small images of colored rectangles (various sizes and formats) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = (48, 80) if i % 2 else (64, 64)
        image = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3)
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


CAPTION_WORDS = ["a", "red", "blue", "square", "on", "the", "sky"]


def make_captioner(folder: Path, seed: int = 3) -> Path:
    """An untrained captioner for the recipe's 64-wide features and queries (``folder/captioner.ckpt``).

    Seed 3 makes one that says words (others may stop at once) and different ones for different regions.
    """
    lm = make_word_level_lm(folder / "lm", CAPTION_WORDS, width=32)
    config: dict[str, Any] = dict(
        language_model=str(lm), feature_dim=64, query_dim=64, width=32, num_layers=2, num_heads=2, ffn_dim=64
    )
    torch.manual_seed(seed)
    return save_captioner(SegmentCaptioner(**config), config, folder / "captioner.ckpt")
