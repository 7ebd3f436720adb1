"""The open-vocabulary world end to end with tiny settings: pretrain -> fit on seen classes -> zero-shot test.

The same commands ``make demo`` runs, at a size that proves the plumbing (the accuracy figures come from
``make demo`` and ``make ablate``): the pretrained file is the official format and is reused by its record,
the segmenter loads it frozen, and the zero-shot splits report PQ per class group.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from omtseg.checkpoint import EVAL_SIZE_KEY, TRAINED_NAMES_KEY
from omtseg.cli import run_command
from omtseg.commands.pretrain import ensure_pretrained
from omtseg.commands.runs import fit_and_test, zero_shot_test
from omtseg.data.world import world_categories

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pretrain_fit_and_zero_shot_test(tmp_path: Path) -> None:
    data = tmp_path / "world"
    backbone = tmp_path / "beit3.pth"
    config = REPO / "configs" / "pretrain" / "world_tiny.yaml"
    overrides = [
        "--trainer.max_steps",
        "6",
        "--trainer.val_check_interval",
        "6",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path / "pretrain"),
        "--data.init_args.root",
        str(data),
        "--data.init_args.world.num_images",
        "40",
        "--data.init_args.val_images",
        "8",
        "--data.init_args.batch_size",
        "8",
        "--model.init_args.scheduler.init_args.warmup_steps",
        "2",
    ]
    record = ensure_pretrained(config, backbone, overrides)
    assert not record["reused"] and backbone.is_file()
    assert record["metrics"]["val/mlm_acc"] >= 0.0 and "val/unigram_acc" in record["metrics"]
    stamp = backbone.stat().st_mtime_ns
    assert ensure_pretrained(config, backbone, overrides)["reused"]  # same recipe: the file is reused
    assert backbone.stat().st_mtime_ns == stamp

    args = [
        "--config",
        str(REPO / "configs" / "world.yaml"),
        "--model.backbone_weights",
        str(backbone),
        "--data.init_args.root",
        str(data),
        "--data.init_args.world.num_train",
        "8",
        "--data.init_args.world.num_val",
        "4",
        "--data.init_args.world.num_test",
        "4",
        "--trainer.max_steps",
        "4",
        "--model.scheduler.init_args.warmup_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    result = fit_and_test(args, tmp_path / "run")
    assert "test/pq_seen" in result["test"] and "test/pq_novel" not in result["test"]
    novel = zero_shot_test(args, result["best_checkpoint"], tmp_path / "run", "novel")
    # The novel split is prompted with all 28 names and reports each group it holds.
    assert {"test/pq", "test/pq_novel", "test/pq_seen", "test/miou_novel"} <= set(novel)
    # The checkpoint records the training classes' names: the seen classes, no untrained one.
    ckpt = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=False)
    seen = {c["name"] for c in world_categories(("seen",))}
    assert set(ckpt[TRAINED_NAMES_KEY]) == seen
    # ... and the size its data evaluates at, the default image size of `Segmenter.from_checkpoint`.
    assert ckpt[EVAL_SIZE_KEY] == 64
    # `omtseg calibrate` picks a penalty from its grid on unseen_val; the tests apply it.
    out = tmp_path / "calibration.json"
    data_args = ["--data.init_args.root", str(data)]
    world = str(REPO / "configs" / "world.yaml")
    argv = ["calibrate", "--ckpt", result["best_checkpoint"], "--config", world, "--grid", "0", "2",
            "--out", str(out), *data_args, "--data.init_args.world.num_test", "4"]  # fmt: skip
    assert run_command(argv) == 0
    # A recipe whose data has no seen/unseen groups is refused with the reason (exit 2), not a parser dump.
    demo = str(REPO / "configs" / "demo.yaml")
    assert run_command(["calibrate", "--ckpt", result["best_checkpoint"], "--config", demo]) == 2
    chosen = json.loads(out.read_text())
    assert chosen["best"] in (0.0, 2.0) and [r["penalty"] for r in chosen["rows"]] == [0.0, 2.0]
    run_dir = tmp_path / "run"
    calibrated = zero_shot_test(args, result["best_checkpoint"], run_dir, "novel", seen_class_penalty=2.0)
    assert {"test/pq", "test/pq_novel", "test/pq_seen"} <= set(calibrated)
    assert (tmp_path / "run" / "test_novel_calibrated").is_dir()
    # The segmenter's frozen BEiT-3 is the pretrained one.
    weights = torch.load(backbone, weights_only=True)["model"]
    assert torch.equal(result["segmenter"].backbone.text_embed.weight, weights["beit3.text_embed.weight"])
