from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from PIL import Image

from omtseg.data.coco_panoptic import PanopticSplit
from omtseg.data.datamodule import ImageFolderDataset, PanopticDataModule, SeededSampler, SyntheticData
from omtseg.data.synthetic import make_synthetic_panoptic, synthetic_vocabulary
from omtseg.types import Batch

SMALL = dict(batch_size=3, crop_size=32, eval_size=64, size_divisibility=32)


def _split(name: str) -> PanopticSplit:
    # Relative paths: resolved against the datamodule's root.
    return PanopticSplit(f"images/{name}", f"panoptic/{name}", f"panoptic_{name}.json", "categories.json")


def _module(root: Path, **kw: object) -> PanopticDataModule:
    args = dict(SMALL, root=str(root), train=_split("train"), val=_split("val"), test=_split("test"))
    args.update(kw)
    return PanopticDataModule(**args)


def test_one_batch_from_each_split(synthetic_root: Path) -> None:
    dm = _module(synthetic_root, predict_image_dir=str(synthetic_root / "images" / "val"))
    dm.setup()
    train = next(iter(dm.train_dataloader()))
    assert isinstance(train, Batch) and train.images.shape == (3, 3, 32, 32)
    assert train.vocabulary == synthetic_vocabulary() == dm.vocabulary
    assert len(train.targets) == 3 and train.semantic.shape == (3, 32, 32)
    for loader, n in ((dm.val_dataloader(), 3), (dm.test_dataloader(), 3)):
        batch = next(iter(loader))
        assert batch.images.shape == (n, 3, 64, 64)
        assert [i.resized_size for i in batch.infos] == [(64, 64)] * n
        assert [i.orig_size for i in batch.infos] == [(64, 64)] * n
    predict = next(iter(dm.predict_dataloader()))
    assert predict.targets is None and predict.semantic is None
    assert predict.infos[0].image_id == "000000" and predict.vocabulary == synthetic_vocabulary()


def test_predict_with_any_vocabulary(synthetic_root: Path, tmp_path: Path) -> None:
    dm = PanopticDataModule(
        predict_image_dir=str(synthetic_root / "images" / "test"),
        predict_class_names=["ball", "tv, monitor"],
        predict_stuff_names=["sky"],
        eval_batch_size=2,
        eval_size=None,
    )
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch.vocabulary.names == ("ball", "tv", "sky")
    assert batch.vocabulary.synonyms[1] == ("tv", "monitor")
    assert batch.vocabulary.is_thing == (True, True, False)
    assert batch.images.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="predict_image_dir"):
        PanopticDataModule().setup("predict")


def test_training_batches_are_seeded_and_independent_of_workers(synthetic_root: Path) -> None:
    def first(seed: int, workers: int) -> Batch:
        dm = _module(synthetic_root, seed=seed, num_workers=workers)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first(0, 0), first(0, 1), first(1, 0)
    assert torch.equal(a.images, b.images) and [i.image_id for i in a.infos] == [i.image_id for i in b.infos]
    assert all(torch.equal(x.masks, y.masks) for x, y in zip(a.targets, b.targets, strict=True))
    assert not torch.equal(a.images, c.images)


def test_seeded_sampler_epochs() -> None:
    sampler = SeededSampler(10, seed=3)
    first, second = list(sampler), list(sampler)  # no set_epoch: each pass is a new epoch
    assert sorted(i for i, _ in first) == list(range(10)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first
    ordered = list(SeededSampler(5, seed=3, shuffle=False))
    assert [i for i, _ in ordered] == list(range(5)) and len({s for _, s in ordered}) == 5


def test_synthetic_option_generates_in_prepare_data(tmp_path: Path) -> None:
    dm = PanopticDataModule(
        root=str(tmp_path),
        synthetic=SyntheticData(num_train=4, num_val=2, num_test=1, image_size=40),
        **SMALL,
    )
    dm.prepare_data()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "categories.json",
        "panoptic_test.json",
        "panoptic_train.json",
        "panoptic_val.json",
    ]
    dm.setup("test")
    assert len(dm.datasets["test"]) == 1
    assert next(iter(dm.test_dataloader())).images.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="either `synthetic` or"):
        PanopticDataModule(synthetic=SyntheticData(), train=_split("train"))


def test_missing_splits_name_the_fix(synthetic_root: Path) -> None:
    dm = PanopticDataModule(root=str(synthetic_root), train=_split("train"), **SMALL)
    dm.setup("fit")  # no val split: fit trains without validation
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match=r"No test split is configured; set data\.test"):
        dm.setup("test")
    with pytest.raises(ValueError, match="No val split"):
        dm.setup("validate")
    with pytest.raises(ValueError, match="Unknown stage"):
        dm.setup("train")
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        PanopticDataModule(root=str(synthetic_root / "nowhere"), train=_split("train")).setup("fit")


def test_image_folder_dataset(tmp_path: Path, synthetic_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        ImageFolderDataset(image_dir=tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="No .jpg/.jpeg/.png images"):
        ImageFolderDataset(image_dir=tmp_path)
    ds = ImageFolderDataset(image_dir=synthetic_root / "images" / "val")
    assert len(ds) == 5 and ds[4].image.shape == (3, 64, 64) and ds[4].info.file_name == "000004.png"


def test_configurable_from_yaml(synthetic_root: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PanopticDataModule, "data")
    cfg = parser.parse_string(
        f"""
data:
  root: {synthetic_root}
  train: {{image_dir: images/train, panoptic_dir: panoptic/train, panoptic_json: panoptic_train.json}}
  batch_size: 4
  crop_size: 32
"""
    )
    dm = parser.instantiate_classes(cfg)["data"]
    assert isinstance(dm, PanopticDataModule)
    assert dm.splits["train"].image_dir == str(synthetic_root / "images" / "train")
    assert dm.batch_size == 4 and dm.train_transform.crop_size == 32


class _Probe(LightningModule):
    """The smallest module that consumes batches: checks what Lightning hands over."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, ...]] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.seen.append(tuple(batch.images.shape))
        assert batch.targets is not None and batch.vocabulary == synthetic_vocabulary()
        return self.weight * batch.images.float().mean()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.seen.append(tuple(batch.images.shape))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_runs_on_the_datamodule(synthetic_root: Path, tmp_path: Path) -> None:
    probe = _Probe()
    trainer = Trainer(
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=_module(synthetic_root))
    assert probe.seen == [(3, 3, 32, 32), (3, 3, 32, 32), (3, 3, 64, 64)]


def test_setup_lists_every_problem_of_the_dataset_files_before_training(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 3)):
        make_synthetic_panoptic(tmp_path, num_images=n, image_size=32, seed=0, split=split)
    (tmp_path / "panoptic" / "val" / "000001.png").unlink()  # a missing validation PNG
    Image.new("RGB", (40, 32)).save(tmp_path / "images" / "train" / "000002.png")  # JSON says 32x32
    (tmp_path / "images" / "val" / "000002.png").write_bytes(b"")  # an empty image
    dm = PanopticDataModule(**dict(SMALL, root=str(tmp_path), train=_split("train"), val=_split("val")))
    with pytest.raises(ValueError) as error:
        dm.setup("fit")  # before any training step: Lightning sets the datamodule up first
    message = str(error.value)
    assert message.startswith("3 problem(s) with the dataset files of train/val")
    assert "panoptic/val/000001.png: PNG of image 1 not found" in message
    assert "images/train/000002.png: image is 40x32 but panoptic_train.json says 32x32" in message
    assert "images/val/000002.png: image of image 2 unreadable" in message


def test_unreadable_prediction_images_are_skipped_with_the_reason(
    tmp_path: Path, synthetic_root: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000.png", "000001.png"):
        (images / name).write_bytes((synthetic_root / "images" / "val" / name).read_bytes())
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.png").write_text("not an image")
    dm = PanopticDataModule(
        **dict(SMALL, predict_image_dir=str(images), predict_class_names=["ball"], eval_batch_size=2)
    )
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [len(b) for b in batches] == [2, 0]
    assert batches[1].skipped == [("empty.jpg", "empty file (0 bytes)"),
                                  ("notes.png", "not an image (no image format recognised)")]  # fmt: skip
