"""``omtseg fit --config configs/caption/*.yaml``: the captioner trained through the CLI, its checkpoints
captioning through ``Segmenter``, and the segmenter's command lines untouched."""

from __future__ import annotations

import csv
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from _tiny_segmenter import IMAGE_SIZE, make_checkpoint, make_images
from PIL import Image

from omtseg import Segmenter
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import load_captioner
from omtseg.cli import build_caption_cli, main, trains_captioner
from omtseg.data.synthetic import make_synthetic_panoptic

CAPTION = Path(__file__).resolve().parents[2] / "configs" / "caption"
TINY_CAPTIONER = [
    # The demo recipe's segmenter (tests/_tiny_segmenter.py) has 64-wide features and queries, as the world's.
    "--model.init_args.captioner.init_args.width", "32",
    "--model.init_args.captioner.init_args.num_layers", "3",
    "--model.init_args.captioner.init_args.num_heads", "2",
    "--model.init_args.captioner.init_args.ffn_dim", "64",
    "--model.init_args.official_metrics", "false",  # Java's start-up is seconds; the protocol has its tests
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def segmenter_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("segmenter") / "segmenter.ckpt")


def _tiny_world(tmp: Path, segmenter_ckpt: Path) -> list[str]:
    return [
        "--config", str(CAPTION / "world.yaml"), *TINY_CAPTIONER,
        "--model.init_args.segmenter_checkpoint", str(segmenter_ckpt),
        "--model.init_args.captioner.init_args.language_model", str(tmp / "lm"),
        "--data.init_args.root", str(tmp / "world"),
        "--data.init_args.world.num_train", "8",
        "--data.init_args.world.num_val", "4",
        "--data.init_args.world.num_test", "4",
        "--data.init_args.batch_size", "8",
        "--trainer.default_root_dir", str(tmp / "run"),
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


def test_routing_follows_the_first_config_only(tmp_path: Path) -> None:
    assert all(trains_captioner(["fit", "--config", str(p)]) for p in CAPTION.glob("*.yaml"))
    assert trains_captioner([f"--config={CAPTION / 'vg.yaml'}"])
    configs = CAPTION.parent
    assert not trains_captioner(["fit", "--config", str(configs / "world.yaml")])
    assert not trains_captioner(["fit", "--config", str(configs / "demo.yaml")])
    assert not trains_captioner(["fit", "--model.backbone_weights", "x.pth"])
    assert not trains_captioner(["fit", "--config", str(tmp_path / "missing.yaml")])
    # A recipe naming its model file is routed by that file's class_path.
    (tmp_path / "model.yaml").write_text(
        yaml.safe_dump({"class_path": "omtseg.lit_captioner.CaptionerModule"})
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"model": "model.yaml"}))
    assert trains_captioner(["fit", "--config", str(tmp_path / "recipe.yaml")])


def test_world_recipe_trains_and_its_checkpoint_captions(segmenter_ckpt: Path, tmp_path: Path) -> None:
    args = _tiny_world(tmp_path, segmenter_ckpt)
    with mock.patch.object(sys, "argv", ["omtseg"]):
        main(
            ["fit", *args, "--trainer.max_steps", "6", "--model.init_args.captioner.init_args.lm_width", "32"]
        )
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert [p.name for p in checkpoints.glob("best-*.ckpt")]  # the best of val/cider_d
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/caption_loss"]) for r in rows if r.get("train/caption_loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]  # one batch, seen six times: the loss falls
    assert any(r.get("val/cider_d") for r in rows)  # validated on the world's val split

    captioner, config = load_captioner(checkpoints / "last.ckpt")
    assert config["language_model"] == str((tmp_path / "lm").resolve())
    assert "lm_width" not in config and config["width"] == 32  # SegmentCaptioner's own arguments
    state = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(captioner.caption_queries, state["captioner.caption_queries"])

    (image,) = make_images(tmp_path / "images", count=1)
    seg = Segmenter.from_checkpoint(
        segmenter_ckpt, captioner=checkpoints / "last.ckpt", image_size=IMAGE_SIZE
    )
    result = seg.caption(image, boxes=[[0, 0, 32, 32], [10, 5, 60, 40]], points=[[50, 20]])
    assert len(result.captions) == 3 and all(isinstance(c, str) for c in result.captions)
    vocab = json.loads((tmp_path / "lm" / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(" ".join(result.captions).split()) <= set(vocab)  # words of the world's language model

    # The same recipe validates the checkpoint, the segmenter and language model rebuilt from the config.
    with mock.patch.object(sys, "argv", ["omtseg"]):
        cli = build_caption_cli(["validate", *args, "--ckpt_path", str(checkpoints / "last.ckpt")])
    assert "val/cider_d" in cli.trainer.callback_metrics
    assert cli.model.vocabulary.names[0] == "red ball"  # the world's seen classes, from the datamodule

    # A next stage (SCA: weak pre-training, then VG) starts from these weights.
    start = ["--model.init_args.captioner_checkpoint", str(checkpoints / "last.ckpt")]
    with mock.patch.object(sys, "argv", ["omtseg"]):
        cli = build_caption_cli([*args, *start], run=False)
    assert torch.equal(cli.model.captioner.caption_queries, state["captioner.caption_queries"])


def test_evaluating_a_captioner_needs_its_checkpoint(segmenter_ckpt: Path, tmp_path: Path) -> None:
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        main(["validate", *_tiny_world(tmp_path, segmenter_ckpt)])
    assert exit_info.value.code == 2


def test_captioner_widths_must_be_the_segmenter_s(segmenter_ckpt: Path, tmp_path: Path) -> None:
    args = [*_tiny_world(tmp_path, segmenter_ckpt), "--model.init_args.captioner.init_args.query_dim", "48"]
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(ValueError, match="query_dim: 64"):
        build_caption_cli(args, run=False)


@pytest.mark.parametrize("name", ["world", "vg", "coco_weak", "refcocog"])
def test_recipes_print_their_sca_switches(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CAPTION / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "omtseg.lit_captioner.CaptionerModule"
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/cider_d"
    if name != "world":  # SCA's recipe; the world's is the demo's
        captioner = model["captioner"]["init_args"]
        assert (model["label_smoothing"], model["warmup_steps"], model["lr_decay"]) == (0.1, 200, "cosine")
        assert model["regions_per_image"] == 16 and captioner["region_conditioning"] == "query"
        assert (captioner["num_task_tokens"], captioner["task_tokens_first"]) == (6, True)
        assert config["data"]["init_args"]["jitter"]["init_args"]["size"] == 1024


def _tiny_recipe(name: str, segmenter_ckpt: Path, lm: Path, root: Path) -> list[str]:
    """A GPU recipe made tiny: CPU, fp32, the test's segmenter and LM, 64-pixel jitter."""
    return [
        "--config", str(CAPTION / f"{name}.yaml"), *TINY_CAPTIONER,
        "--model.init_args.segmenter_checkpoint", str(segmenter_ckpt),
        "--model.init_args.captioner.init_args.language_model", str(lm),
        "--model.init_args.captioner.init_args.feature_dim", "64",
        "--model.init_args.captioner.init_args.query_dim", "64",
        "--data.init_args.root", str(root),
        "--data.init_args.num_workers", "0",
        "--data.init_args.jitter.init_args.size", "64",
        "--data.init_args.jitter.init_args.min_scale", "0.5",  # tiny images: keep their boxes in sight
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(root / "run"),
    ]  # fmt: skip


def _visual_genome(root: Path) -> None:
    """Three VG images with boxed phrases and DenseCap's split file, in the layout vg.yaml reads."""
    vg = root / "visual_genome"
    rng = np.random.default_rng(0)
    entries = []
    for image_id, folder in ((1, "VG_100K"), (2, "VG_100K_2"), (3, "VG_100K")):
        (vg / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(
            vg / folder / f"{image_id}.jpg"
        )
        regions = [
            {"region_id": 10 * image_id + k, "x": 4 + 10 * k, "y": 4, "width": 30, "height": 20,
             "phrase": f"a red box {k}"}
            for k in range(3)
        ]  # fmt: skip
        entries.append({"id": image_id, "regions": regions})
    (vg / "region_descriptions.json").write_text(json.dumps(entries))
    (vg / "densecap_splits.json").write_text(json.dumps({"train": [1, 2], "val": [3], "test": [3]}))


def _coco(root: Path) -> None:
    """A tiny COCO-panoptic-format dataset where coco_weak.yaml reads COCO."""
    for split in ("train", "val"):
        paths = make_synthetic_panoptic(root / "tmp", num_images=2, image_size=64, seed=1, split=split)
        coco = root / "coco"
        (coco / "annotations").mkdir(parents=True, exist_ok=True)
        Path(paths.image_dir).rename(coco / f"{split}2017")
        Path(paths.panoptic_dir).rename(coco / f"panoptic_{split}2017")
        data = json.loads(Path(paths.panoptic_json).read_text())
        if paths.categories_json:
            data["categories"] = json.loads(Path(paths.categories_json).read_text())
        (coco / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))


def _refcocog(root: Path) -> None:
    """Two COCO images, one referred polygon each (a train ref, a val ref), where refcocog.yaml reads."""
    (root / "refcocog").mkdir()
    (root / "coco" / "train2014").mkdir(parents=True)
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 48, "width": 64} for i in (5, 6)
    ]
    for image in images:
        Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "coco" / "train2014" / image["file_name"])
    annotations = [
        {"id": 10 * i, "image_id": i, "category_id": 1, "iscrowd": 0,
         "segmentation": [[4, 4, 40, 4, 40, 30, 4, 30]]}
        for i in (5, 6)
    ]  # fmt: skip
    (root / "refcocog" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )
    refs = [
        {"ref_id": i, "ann_id": 10 * i, "image_id": i, "split": split, "category_id": 1,
         "sentences": [{"sent": "the red box"}, {"sent": "a box"}]}
        for i, split in ((5, "train"), (6, "val"))
    ]  # fmt: skip
    with (root / "refcocog" / "refs(umd).p").open("wb") as f:
        pickle.dump(refs, f)


@pytest.mark.parametrize("name", ["vg", "coco_weak", "refcocog"])
def test_gpu_recipes_build_and_train_on_tiny_data(name: str, segmenter_ckpt: Path, tmp_path: Path) -> None:
    lm = make_word_level_lm(tmp_path / "lm", "a red box 0 1 2 person wall the".split(), width=32)
    {"vg": _visual_genome, "coco_weak": _coco, "refcocog": _refcocog}[name](tmp_path)
    with mock.patch.object(sys, "argv", ["omtseg"]):
        cli = build_caption_cli(_tiny_recipe(name, segmenter_ckpt, lm, tmp_path), run=False)
    data, module = cli.datamodule, cli.model
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert len(batch) == (1 if name == "refcocog" else 2) and max(batch.images.shape[-2:]) <= 64  # jittered
    if name == "refcocog":
        assert batch.captions == [["the red box", "a box"]] and batch.region_ids == ["5"]  # the train ref
        assert [image_id for image_id, _ in data.datasets["val"].records] == [6]  # type: ignore[attr-defined]
    elif name == "vg":
        assert [r[0] for r in data.datasets["val"].records] == [3]  # type: ignore[attr-defined]
        assert batch.captions[0][0].startswith("a red box")
        assert len(module.vocabulary.names) == 133  # VG has no classes: the segmenter runs with COCO's
    else:
        names = set(module.vocabulary.names)
        assert batch.captions and len(names) == len(data.class_names)
        assert {c[0] for c in batch.captions} <= names  # bare class names, SCA's weak supervision
    optimizer = torch.optim.AdamW(module.param_groups(), lr=1e-3)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in module.segmenter.parameters())  # the segmenter stays frozen
