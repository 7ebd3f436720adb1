"""Zero-shot evaluation end to end: `omtseg test` with configs/eval/*.yaml, and `omtseg eval-all`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from omtseg.checkpoint import check_checkpoint
from omtseg.cli import build_cli, run_command
from omtseg.commands.eval_all import main, plan, results_table
from omtseg.data.synthetic_benchmark import write_synthetic_benchmark
from omtseg.data.world import make_world_split

REPO = Path(__file__).resolve().parents[1]
PQ_KEYS = {f"test/{m}{s}" for m in ("pq", "sq", "rq") for s in ("", "_th", "_st")}
CONFIGS = {  # configs/eval file -> benchmark it evaluates
    "ade20k_150": "ade20k_150_panoptic",
    "ade20k_847": "ade20k_847",
    "pascal_context_59": "pascal_context_59",
    "pascal_context_459": "pascal_context_459",
    "pascal_voc_20": "pascal_voc_20",
}
NUM_QUERIES = 8  # differs from the placeholder model config of configs/eval (16): the checkpoint's must win


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model saved as `omtseg fit` saves it (config in hyper_parameters)."""
    out = tmp_path_factory.mktemp("ckpt")
    # Narrower than the demo model, and long prompt chunks: ADE20K-847 then takes 5 joint passes, not 19.
    narrow = {"num_queries": NUM_QUERIES, "adapter_channels": 32, "conv_dim": 32, "mask_dim": 32,
              "hidden_dim": 32, "num_decoder_layers": 2, "max_text_tokens": 1022}  # fmt: skip
    args = ["--config", str(REPO / "configs/demo.yaml"), "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(out),
            "--model.eval_tasks", "[panoptic, semantic]"]  # fmt: skip
    for key, value in narrow.items():
        args += [f"--model.model.init_args.{key}", str(value)]
    cli = build_cli(args, run=False)
    cli.trainer.strategy.connect(cli.model)
    path = out / "tiny.ckpt"
    cli.trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every benchmark, 2 images of 64 px each, in its prepared layout."""
    root = tmp_path_factory.mktemp("datasets")
    for benchmark in CONFIGS.values():
        write_synthetic_benchmark(root, benchmark, num_images=2, image_size=64)
    return root


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_omtseg_test_runs_each_eval_config(
    config: str, checkpoint: Path, datasets: Path, tmp_path: Path
) -> None:
    args = ["test", "--config", str(REPO / f"configs/eval/{config}.yaml"), "--ckpt_path", str(checkpoint),
            "--data.init_args.root", str(datasets), "--data.init_args.eval_size", "64",
            "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = build_cli(args)
    assert cli.datamodule.benchmark == CONFIGS[config]
    # The model is rebuilt from the checkpoint's config, not from the placeholder in configs/eval.
    assert cli.model.model.decoder.query_feat.num_embeddings == NUM_QUERIES
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    # The checkpoint's eval_tasks (panoptic, semantic) apply; semantic benchmarks have no panoptic targets.
    expected = {"test/miou"} | (PQ_KEYS if config == "ade20k_150" else set())
    assert set(logged) == expected
    assert all(0.0 <= v <= 100.0 for v in logged.values())


def test_eval_all_writes_the_table_and_skips_missing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "datasets"
    for benchmark in ("ade20k_150_panoptic", "pascal_voc_20"):
        write_synthetic_benchmark(root, benchmark, num_images=2, image_size=64)
    out = tmp_path / "eval"
    argv = ["--ckpt", str(checkpoint), "--out", str(out), "--root", str(root), "--eval-size", "64",
            "--num-workers", "0", "--accelerator", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert table in printed
    results = json.loads((out / "results.json").read_text())
    groups = results["groups"]
    assert [g for g, e in groups.items() if e["benchmark"] is not None] == ["ade20k_150", "pascal_voc_20"]
    ade = groups["ade20k_150"]
    assert ade["benchmark"] == "ade20k_150_panoptic" and ade["images"] == 2
    # eval_all asks for AP although the checkpoint's own eval_tasks leave instance out.
    assert {"pq", "ap", "miou"} <= set(ade["metrics"])
    assert groups["pascal_voc_20"]["metrics"].keys() == {"miou"}
    for skipped in ("ade20k_847", "pascal_context_459", "pascal_context_59"):
        assert groups[skipped]["metrics"] == {}
        assert f"omtseg prepare {skipped}" in groups[skipped]["notes"][0]
    header, _, row = table.splitlines()[:3]
    assert header == "| checkpoint | A-847 | PC-459 | A-150 | PC-59 | PAS-20 | PQ | AP |"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "tiny.ckpt" and cells[1:3] == ["–", "–"] and cells[4] == "–"
    assert all(c != "–" for c in (cells[3], cells[5], cells[6], cells[7]))
    assert "ade20k_847: ADE20K-847:" in table  # the skip reasons follow the table


def test_plan_falls_back_to_ade_semantic_maps(tmp_path: Path) -> None:
    write_synthetic_benchmark(tmp_path, "ade20k_150", num_images=1, image_size=16)
    planned = {p.group: p for p in plan(tmp_path)}
    ade = planned["ade20k_150"]
    assert ade.benchmark == "ade20k_150" and "ADE20K-150 panoptic" in ade.notes[0]
    assert all(p.benchmark is None for g, p in planned.items() if g != "ade20k_150")


def test_results_table_cells() -> None:
    groups = {
        "ade20k_847": {"metrics": {"miou": 12.345}, "notes": []},
        "ade20k_150": {"metrics": {"miou": 30.0, "pq": math.nan}, "notes": ["ADE20K-150 panoptic: gone"]},
    }
    lines = results_table(groups, "m.ckpt").splitlines()
    assert lines[2] == "| m.ckpt | 12.3 | – | 30.0 | – | – | – | – |"
    assert lines[-1] == "- ade20k_150: ADE20K-150 panoptic: gone"


def test_eval_all_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    assert run_command(["eval-all", "--ckpt", str(checkpoint), "--root", str(tmp_path), "--out", out]) == 2
    message = capsys.readouterr().err
    assert "No zero-shot benchmark is prepared" in message and "omtseg prepare pascal_voc_20" in message
    assert run_command(["eval-all", "--ckpt", str(tmp_path / "none.ckpt"), "--root", str(tmp_path)]) == 2
    assert "Checkpoint not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):  # --debug: the traceback instead
        run_command(["eval-all", "--debug", "--ckpt", str(tmp_path / "none.ckpt"), "--root", str(tmp_path)])
    bare = tmp_path / "bare.ckpt"
    torch.save({"omtseg_format": 1, "state_dict": {}, "hyper_parameters": {}}, bare)
    with pytest.raises(ValueError, match="no saved model config"):
        check_checkpoint(bare, need_model_config=True)


def test_extra_commands_beside_lightning_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command([]) is None
    assert run_command(["test", "--config", "x.yaml"]) is None
    assert run_command(["prepare", "pascal_voc_20", "--src", str(tmp_path / "raw")]) == 2
    assert "omtseg prepare: error" in capsys.readouterr().err
    assert run_command(["eval-all", "--ckpt", str(tmp_path / "x.ckpt"), "--root", str(tmp_path)]) == 2
    assert "omtseg eval-all: error: Checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["seen", "unseen", "novel"])
def test_omtseg_test_runs_each_world_config(name: str, checkpoint: Path, tmp_path: Path) -> None:
    split = "test" if name == "seen" else name
    args = ["test", "--config", str(REPO / f"configs/eval/world_{name}.yaml"), "--ckpt_path", str(checkpoint),
            "--data.init_args.root", str(tmp_path / "world"), "--data.init_args.world.num_test", "2",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            ]  # fmt: skip
    cli = build_cli(args)
    assert cli.model.model.decoder.query_feat.num_embeddings == NUM_QUERIES
    # Only the evaluated split is written: an evaluation does not generate training images.
    assert sorted(p.name for p in (tmp_path / "world" / "images").iterdir()) == [split]
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    groups = {"seen"} if name == "seen" else {"seen", name}
    assert {"test/pq", "test/miou"} | {f"test/pq_{g}" for g in groups} <= set(logged)
    assert all(0.0 <= v <= 100.0 for v in logged.values())


def test_eval_all_reports_the_world_sets(checkpoint: Path, tmp_path: Path) -> None:
    world = tmp_path / "world"
    for split in ("unseen", "novel"):
        make_world_split(world, split, 2)
    out = tmp_path / "eval"
    argv = ["--ckpt", str(checkpoint), "--out", str(out), "--root", str(tmp_path / "none"), "--world-root",
            str(world), "--num-workers", "0", "--accelerator", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0  # no real benchmark, but world sets: something to evaluate
    groups = json.loads((out / "results.json").read_text())["groups"]
    seen = groups["world_seen"]
    assert seen["benchmark"] is None and "panoptic_test.json not found" in seen["notes"][0]
    for name in ("unseen", "novel"):
        entry = groups[f"world_{name}"]
        assert entry["benchmark"] == name and entry["images"] == 2
        assert {"pq", "miou", f"pq_{name}", "pq_seen"} <= set(entry["metrics"])
    table = (out / "results.md").read_text()
    world_rows = table.split("Open-vocabulary world")[1].splitlines()
    header = next(line for line in world_rows if line.startswith("| set"))
    assert header.split("|")[2].strip() == "PQ" and "PQ novel" in header
    body = [line for line in world_rows if line.startswith("| ") and "set" not in line]
    rows = {line.split("|")[1].strip(): line for line in body}
    assert set(rows) == {"unseen", "novel"}
    pq_novel = float(rows["novel"].split("|")[5])
    assert pq_novel == pytest.approx(groups["world_novel"]["metrics"]["pq_novel"], abs=0.05)
