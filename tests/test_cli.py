"""`omtseg fit|test|predict` through ``main(args)`` with the shipped demo recipe, shrunk by overrides."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from lightning import Trainer
from PIL import Image

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import save_captioner
from omtseg.cli import COMMANDS
from omtseg.cli import main as _main
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.data.synthetic import synthetic_vocabulary
from omtseg.data.vocabulary import read_class_list
from omtseg.modeling.segmenter import OMTSeg

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _args(command: str, root: Path, run_dir: Path, *extra: str) -> list[str]:
    # The demo recipe at test size: 4 training images, tiny point counts, 2-image batches.
    return [
        command, "--config", str(CONFIG),
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.root", str(root / "data"),
        "--data.init_args.synthetic.num_train", "4",
        "--data.init_args.synthetic.num_val", "2",
        "--data.init_args.synthetic.num_test", "2",
        "--data.init_args.batch_size", "2",
        "--data.init_args.eval_batch_size", "2",
        "--model.model.init_args.num_decoder_layers", "2",
        "--model.scheduler.init_args.warmup_steps", "2",
        "--model.criterion.init_args.num_points", "256",
        "--model.criterion.init_args.matcher.init_args.num_points", "256",
        *extra,
    ]


def main(args: list[str]) -> None:
    # As the console script sees it: pytest's own argv must not leak into the CLI.
    with mock.patch.object(sys, "argv", ["omtseg"]):
        _main(args)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    (path,) = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models are made of small ops: on a busy 2-core machine one intra-op thread costs ~10x less CPU
    # time than two spinning on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, run dir) of a 4-step fit with validation after each 2-step epoch."""
    root = tmp_path_factory.mktemp("cli")
    main(_args("fit", root, root / "fit", "--trainer.max_steps", "4"))
    return root, root / "fit"


def test_fit_writes_checkpoints_metrics_and_the_config(trained: tuple[Path, Path]) -> None:
    _, run = trained
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert last["hyper_parameters"]["model"]["class_path"] == "omtseg.modeling.segmenter.OMTSeg"
    assert last["lr_schedulers"][0]["last_epoch"] == 4  # stepped per iteration
    assert len(list((run / "checkpoints").glob("best-step=*.ckpt"))) == 1
    pq = [float(r["val/pq"]) for r in _rows(run) if r.get("val/pq")]
    assert len(pq) == 2 and all(0.0 <= v <= 100.0 for v in pq)  # one validation per epoch
    rows = _rows(run)
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == [0, 1, 2, 3]
    assert all(r.get("train/loss_dice_0") for r in rows if r.get("train/loss"))  # every term, aux included
    assert any(r.get("lr-Lion/base/decay") for r in rows)


def test_fast_dev_run(tmp_path: Path) -> None:
    main(_args("fit", tmp_path, tmp_path / "run", "--trainer.fast_dev_run", "true"))


def test_resume_continues_at_the_saved_step(trained: tuple[Path, Path]) -> None:
    root, run = trained
    resumed = root / "resumed"
    main(
        _args(
            "fit", root, resumed, "--trainer.max_steps", "6",
            "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        )
    )
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    assert last["lr_schedulers"][0]["last_epoch"] == 6
    steps = sorted({int(r["step"]) for r in _rows(resumed) if r.get("train/loss")})
    assert steps and steps[0] >= 4  # no step was redone from scratch


def test_test_subcommand_logs_panoptic_semantic_and_instance_metrics(trained: tuple[Path, Path]) -> None:
    root, run = trained
    main(_args("test", root, root / "test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")))
    (row,) = [r for r in _rows(root / "test") if r.get("test/pq")]
    for key in ("pq", "pq_th", "pq_st", "sq", "rq", "miou"):
        assert 0.0 <= float(row[f"test/{key}"]) <= 100.0
    assert "test/ap" in row


def test_predict_writes_panoptic_semantic_and_overlays(trained: tuple[Path, Path]) -> None:
    root, run = trained
    vocab = root / "vocab.txt"
    vocab.write_text("# classes\nball\nbox, crate\nstuff: sky\nstuff: grass, lawn\n")
    out = root / "predictions"
    main(
        _args(
            "predict", root, root / "predict",
            "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
            "--data.init_args.predict_image_dir", str(root / "data" / "images" / "test"),
            "--vocabulary_file", str(vocab),
            "--prediction_writer.output_dir", str(out),
            "--prediction_writer.image_dir", str(root / "data" / "images" / "test"),
        )
    )
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert [c["name"] for c in panoptic["categories"]] == ["ball", "box", "sky", "grass"]
    assert [c["isthing"] for c in panoptic["categories"]] == [1, 1, 0, 0]
    assert sorted(a["file_name"] for a in panoptic["annotations"]) == ["000000.png", "000001.png"]
    for name in ("000000.png", "000001.png"):
        for folder in ("panoptic", "semantic", "overlays"):
            assert Image.open(out / folder / name).size == ((512, 512) if folder == "overlays" else (64, 64))
        semantic = np.asarray(Image.open(out / "semantic" / name))
        assert set(np.unique(semantic).tolist()) <= {1, 2, 3, 4}  # category ids of the 4 classes
    assert not (out / ".panoptic_parts").exists()


def test_predict_with_a_captioner_writes_captions(trained: tuple[Path, Path]) -> None:
    root, _ = trained
    lm = make_word_level_lm(root / "lm", synthetic_caption_words(synthetic_vocabulary()), width=32)
    # An untrained captioner for the recipe's segmenter (64-wide features and queries): any words will do.
    config: dict[str, Any] = dict(
        language_model=str(lm), feature_dim=64, query_dim=64, width=32, num_layers=3, num_heads=2, ffn_dim=64
    )
    torch.manual_seed(0)
    captioner = save_captioner(SegmentCaptioner(**config), config, root / "captioner.ckpt")
    images, out = root / "data" / "images" / "test", root / "captioned"
    common = [
        "--data.init_args.predict_image_dir", str(images),
        "--prediction_writer.output_dir", str(out),
        "--prediction_writer.caption_max_tokens", "4",
        # The 4-step segmenter masks nothing yet; a randomly initialised one, with every query kept, does.
        "--model.model.init_args.object_threshold", "0.0",
        "--model.model.init_args.overlap_threshold", "0.0",
        "--allow_random_weights", "true",
    ]
    predict = OMTSeg.predict
    with mock.patch.object(OMTSeg, "predict", autospec=True, side_effect=predict) as calls:
        main(_args("predict", root, root / "predict_cap", *common, "--captioner_ckpt", str(captioner)))
    assert calls.call_count == 1  # one batch of 2 images: captions come from predict_step's own pass
    annotations = json.loads((out / "panoptic.json").read_text())["annotations"]
    segments = [s for a in annotations for s in a["segments_info"]]
    assert segments and all(isinstance(s["caption"], str) for s in segments)
    assert all(len(s["caption"].split()) <= 4 for s in segments)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png", "000001.png"]
    with pytest.raises(FileNotFoundError, match="Captioner checkpoint not found"):
        main(_args("predict", root, root / "none", *common, "--captioner_ckpt", str(root / "none.ckpt"),
                   "--debug"))


def user_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line message (and exit status 2) that `omtseg` ends with for a user's mistake."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"omtseg {args[0]}: error: ")
    return last


def test_predict_errors_are_clear(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert "Image folder not found" in user_error(
        _args("predict", root, tmp_path, "--ckpt_path", ckpt, "--data.init_args.predict_image_dir",
              str(tmp_path / "missing")), capsys)
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    empty = ("--vocabulary_file", str(tmp_path / "empty.txt"))
    line = user_error(_args("predict", root, tmp_path, "--ckpt_path", ckpt, *empty), capsys)
    assert "names no class" in line
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    images = ("--data.init_args.predict_image_dir", str(root / "data" / "images" / "test"))
    assert "not written by omtseg" in user_error(
        _args("predict", root, tmp_path, "--ckpt_path", str(tmp_path / "foreign.ckpt"), *images), capsys)
    with pytest.raises(FileNotFoundError, match="Image folder not found"):  # --debug: the traceback instead
        main(_args("predict", root, tmp_path, "--ckpt_path", ckpt, "--data.init_args.predict_image_dir",
                   str(tmp_path / "missing"), "--debug"))


def test_a_random_file_as_checkpoint_gets_omtsegs_check_not_torchs_advice(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    zipped = tmp_path / "zipped.ckpt"
    torch.save({"w": torch.zeros(2), "f": Path("x")}, zipped)  # a zip that pickles an object
    for path, reason in ((junk, "not a PyTorch checkpoint"), (zipped, "pickled Python objects")):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("omtseg")), "predict", "--config", str(CONFIG),
             "--ckpt_path", str(path)],
            capture_output=True, text=True, env={**os.environ, "OMTSEG_DEBUG": ""}, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("omtseg predict: error: Cannot read checkpoint") and reason in line
        assert "weights_only" not in line


def test_read_class_list(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("cat\n  dog, puppy \n# comment\n\nSTUFF: sky\n")
    assert read_class_list(path) == (["cat", "dog, puppy"], ["sky"])
    with pytest.raises(FileNotFoundError, match="Vocabulary file not found"):
        read_class_list(tmp_path / "nope.txt")


def test_prepare_command_goes_through_the_console_entry(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        _main(
            ["prepare", "pascal_voc_20", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "root")]
        )
    assert excinfo.value.code == 2


def test_options_given_with_ckpt_path_take_effect(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    ckpt = str(run / "checkpoints" / "last.ckpt")  # trained with object_threshold 0.8, all three tasks

    def predict(out: Path, *extra: str) -> list[dict[str, Any]]:
        main(_args("predict", root, tmp_path / "run", "--ckpt_path", ckpt,
                   "--data.init_args.predict_image_dir", str(root / "data" / "images" / "test"),
                   "--prediction_writer.output_dir", str(out), "--prediction_writer.overlays", "false",
                   *extra))
        return json.loads((out / "panoptic.json").read_text())["annotations"]

    keep_all = ("--model.model.init_args.object_threshold", "0.0",
                "--model.model.init_args.overlap_threshold", "0.0", "--model.predict_tasks", "[panoptic]")
    with pytest.raises(SystemExit):
        main(_args("predict", root, tmp_path / "run", "--ckpt_path", ckpt, *keep_all, "--print_config"))
    assert "object_threshold: 0.0" in capsys.readouterr().out  # what is printed is what runs:
    every = predict(tmp_path / "all", *keep_all)
    assert sum(len(a["segments_info"]) for a in every) > 0  # the 0.8 of the checkpoint keeps none
    assert not (tmp_path / "all" / "semantic").exists()  # only the asked task ran
    none = predict(tmp_path / "none", "--model.model.init_args.object_threshold", "1.0")
    assert not any(a["segments_info"] for a in none)
    assert (tmp_path / "none" / "semantic").is_dir()

    main(_args("test", root, tmp_path / "test", "--ckpt_path", ckpt, "--model.eval_tasks", "[panoptic]"))
    (row,) = [r for r in _rows(tmp_path / "test") if r.get("test/pq")]
    assert "test/miou" not in row and "test/ap" not in row


def test_architecture_contradicting_the_checkpoint_is_refused(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    ckpt = str(run / "checkpoints" / "last.ckpt")
    line = user_error(
        _args("test", root, root / "refused", "--ckpt_path", ckpt, "--model.model.init_args.num_queries",
              "8"),
        capsys,
    )
    assert re.search(r"num_queries is 8 .* trained with 16", line)


def test_predict_skips_unreadable_files_and_leaves_no_stale_outputs(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, run = trained
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    good = root / "data" / "images" / "test" / "000000.png"
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(good.read_bytes())
    Image.open(good).convert("RGB").save(images / "c_truncated.jpg", quality=95)
    data = (images / "c_truncated.jpg").read_bytes()
    (images / "c_truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "d_empty.jpg").write_bytes(b"")
    (images / "e_text.png").write_text("not an image")
    (out / ".panoptic_parts").mkdir(parents=True)
    (out / ".panoptic_parts" / "0_0_00000007.json").write_text("{}")
    (out / "panoptic.json").write_text('{"annotations": [], "categories": [], "from": "an earlier run"}')
    args = _args("predict", root, tmp_path / "run", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 "--data.init_args.predict_image_dir", str(images),
                 "--prediction_writer.output_dir", str(out))

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # batches: [a, b], [c, d] (nothing readable), [e]
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "skipped c_truncated.jpg: corrupt or truncated image" in err
    assert "skipped d_empty.jpg: empty file (0 bytes)" in err
    assert "skipped e_text.png: not an image" in err
    assert "Predicted 2 of 5 images" in err
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in panoptic["annotations"]) == ["a.png", "b.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]
    assert not (out / ".panoptic_parts").exists()

    # A crash mid-run: no panoptic.json (the finished run's is gone), no parts left to merge.
    predict = OMTSeg.predict
    calls = []

    def crash_on_second_batch(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return predict(*a, **k)

    (images / "z.png").write_bytes(good.read_bytes())
    with mock.patch.object(OMTSeg, "predict", autospec=True, side_effect=crash_on_second_batch):
        with pytest.raises(RuntimeError, match="out of memory"):
            main(args)
    assert not (out / "panoptic.json").exists() and not (out / ".panoptic_parts").exists()


def test_evaluating_random_weights_needs_to_be_asked_for(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = trained
    images = ("--data.init_args.predict_image_dir", str(root / "data" / "images" / "test"))
    for command in ("validate", "test", "predict"):
        line = user_error(_args(command, root, root / "random", *images), capsys)
        assert "without --ckpt_path would run randomly initialised weights" in line
        assert "--allow_random_weights" in line


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict}" in out
    for name in COMMANDS:
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.MULTILINE), name


def test_make_help_prints_the_datasets_variable() -> None:
    done = subprocess.run(["make", "-s", "help"], cwd=CONFIG.parents[1], capture_output=True, text=True)
    (line,) = [line for line in done.stdout.splitlines() if line.strip().startswith("eval-all")]
    assert "$OMTSEG_DATASETS" in line and "$$" not in line


def test_overlays_are_drawn_on_the_original_image(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = trained
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    fine = (np.indices((150, 200)).sum(0) % 2 * 255).astype(np.uint8)  # a 1-pixel checkerboard
    Image.fromarray(np.stack([fine] * 3, -1)).save(images / "fine.png")
    main(_args("predict", root, tmp_path / "run", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
               "--data.init_args.predict_image_dir", str(images),  # no --prediction_writer.image_dir
               "--prediction_writer.output_dir", str(out), "--prediction_writer.overlay_alpha", "0.0"))
    overlay = np.asarray(Image.open(out / "overlays" / "fine.png").convert("L")).astype(int)
    assert overlay.shape == (600, 800)  # 150 x 200, enlarged 4x (nearest) to a 512+ short side
    # Drawn on the 64-pixel model input, the checkerboard would be a grey blur.
    assert np.array_equal(overlay[::4, ::4], fine)


def test_predict_from_another_directory_writes_only_its_outputs(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, run = trained
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("OMTSEG_DATASETS", raising=False)
    # The recipe's relative paths (data root "data", default_root_dir "outputs/train") point here.
    main(["predict", "--config", str(CONFIG), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--data.init_args.predict_image_dir", str(root / "data" / "images" / "test"),
          "--prediction_writer.output_dir", str(out)])  # fmt: skip
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png", "000001.png"]
    assert list(elsewhere.iterdir()) == []


def test_checkpoint_interval_is_an_option(tmp_path: Path) -> None:
    saved: list[tuple[int, str]] = []
    save = Trainer.save_checkpoint

    def record(trainer: Trainer, path: Any, *args: Any, **kwargs: Any) -> None:
        saved.append((trainer.global_step, Path(path).name))
        save(trainer, path, *args, **kwargs)

    with mock.patch.object(Trainer, "save_checkpoint", autospec=True, side_effect=record):
        main(_args("fit", tmp_path, tmp_path / "fit", "--trainer.max_steps", "3",
                   "--data.init_args.synthetic.num_train", "8",  # 4 steps per epoch: no epoch ends first
                   "--trainer.limit_val_batches", "0", "--checkpoint_every_n_steps", "1"))
    assert [step for step, name in saved if name == "last.ckpt"][:3] == [1, 2, 3]
    with pytest.raises(SystemExit):
        main(_args("fit", tmp_path, tmp_path / "bad", "--checkpoint_every_n_steps", "0"))
