"""The LightningDataModule for COCO-panoptic-format data, plus prediction on a folder of images.

Splits are configured as paths (``train``, ``val``, ``test``: image folder, panoptic PNG folder, panoptic
JSON) or generated: ``synthetic`` writes the synthetic dataset under ``root`` in ``prepare_data``. Relative
paths resolve against ``root`` (default ``$OMTSEG_DATASETS`` or ``data``), the layout of data/README.md.

Training augmentation is seeded per sample by :class:`SeededSampler`: it yields ``(index, seed)`` pairs
drawn from ``(seed, epoch)``, so a run's crops and flips do not depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from omtseg.data.coco_panoptic import CocoPanopticDataset, PanopticSplit, Transform
from omtseg.data.collate import Unreadable, collate, collate_readable
from omtseg.data.synthetic import make_synthetic_panoptic, synthetic_vocabulary
from omtseg.data.transforms import EvalTransform, TrainTransform
from omtseg.data.vocabulary import merge_duplicate_classes, read_categories_json
from omtseg.data.world import make_world_split, world_split_paths
from omtseg.io import read_checked
from omtseg.types import ImageInfo, Sample, Vocabulary

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LISTED = 50
"""Dataset file problems named one by one; more are counted."""


class ImageFolderDataset(Dataset):
    """The images of a folder (jpg/png, sorted by name) as unlabelled samples for prediction.

    A file that cannot be read (empty, not an image, truncated) is an :class:`Unreadable` item with the
    reason, so a run reports and skips it instead of dying on it.

    Args:
        image_dir: folder of user images (not searched recursively).
        transform: applied to each sample (usually :class:`EvalTransform`); None keeps the original size.

    Raises:
        FileNotFoundError: the folder does not exist or holds no jpg/png image.
    """

    def __init__(self, *, image_dir: str | os.PathLike[str], transform: Transform | None = None) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"Image folder not found: {self.image_dir}. Give a folder of jpg/png images."
            )
        self.files = sorted(p.name for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(
                f"No {'/'.join(IMAGE_SUFFIXES)} images in {self.image_dir}; put the images to segment there."
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | Unreadable:
        name = self.files[index]
        try:
            image = read_checked(self.image_dir / name)  # (H, W, 3) uint8
        except ValueError as e:
            return Unreadable(file_name=name, reason=str(e))
        h, w = image.shape[:2]
        sample = Sample(
            image=torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            targets=None,
            info=ImageInfo(image_id=Path(name).stem, file_name=name, orig_size=(h, w), resized_size=(h, w)),
        )
        return self.transform(sample, None) if self.transform is not None else sample


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)``: a permutation (or the identity) and one seed per item.

    Both come from a generator seeded by ``(seed, epoch)``. Lightning calls :meth:`set_epoch` before each
    epoch; without it, every new iteration advances the epoch by one.

    Args:
        num_samples: dataset length.
        seed: base seed.
        shuffle: permute the indices each epoch.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        self.epoch += 1
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=g)
        yield from zip(order.tolist(), seeds.tolist(), strict=True)


class EvalDistributedSampler(DistributedSampler):
    """Evaluation order for several processes: each takes a contiguous block of the dataset, unpadded.

    torch's ``DistributedSampler`` pads the dataset to a multiple of the process count by repeating its
    first items, which then count twice in every metric. Here each item is evaluated exactly once, and
    the blocks follow the dataset order, so metrics gathered in process order see the images as one
    process does. Processes may then run different numbers of batches (evaluation needs no collective
    call per batch).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        per, extra = divmod(n, self.num_replicas)
        self.start = self.rank * per + min(self.rank, extra)
        self.num_samples = per + int(self.rank < extra)
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


def eval_sampler(dataset: Dataset) -> EvalDistributedSampler | None:
    """:class:`EvalDistributedSampler` when ``torch.distributed`` runs several processes, else None (the
    dataset order)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        n, processes = len(dataset), dist.get_world_size()  # type: ignore[arg-type]
        if n < processes:
            # A process without images would never join the metrics' gathering at the end.
            raise ValueError(
                f"The evaluation split has {n} images for {processes} processes; evaluate with at most "
                "as many processes (--trainer.devices) as images."
            )
        return EvalDistributedSampler(dataset)
    return None


@dataclass
class SyntheticData:
    """Generate the synthetic dataset (see :mod:`omtseg.data.synthetic`) instead of reading splits.

    Attributes:
        num_train: training images.
        num_val: validation images.
        num_test: test images (a split of its own, drawn like the others).
        image_size: side of the square images, in pixels.
        seed: generator seed (the data's, not the run's).
    """

    num_train: int = 200
    num_val: int = 50
    num_test: int = 50
    image_size: int = 128
    seed: int = 0


@dataclass
class WorldData:
    """Generate the open-vocabulary world's segmentation splits (see :mod:`omtseg.data.world`).

    Attributes:
        num_train: training images (seen classes only).
        num_val: validation images (seen classes only).
        num_test: images of the test split.
        test_split: what ``test`` evaluates: ``test`` (seen classes), ``unseen`` (unseen compositions among
            seen classes), ``novel`` (novel concepts among seen classes) or ``unseen_val`` (other images
            drawn as ``unseen``'s, for calibration); the last three are prompted with all 28 names.
        image_size: side of the square images, in pixels.
        seed: the world's seed (the data's, not the run's).
    """

    num_train: int = 800
    num_val: int = 60
    num_test: int = 100
    test_split: Literal["test", "unseen", "novel", "unseen_val"] = "test"
    image_size: int = 64
    seed: int = 0


class PanopticDataModule(LightningDataModule):
    """Train/val/test splits in COCO panoptic format, and a folder of images to predict on.

    Args:
        root: datasets root; relative split paths resolve against it and ``synthetic`` writes there.
            None: ``$OMTSEG_DATASETS``, else ``data``.
        train: training split, or None.
        val: validation split, or None (then fit runs without validation).
        test: test split, or None.
        synthetic: generate train/val/test under ``root`` instead (exclusive with the three above).
        world: generate the open-vocabulary world's splits under ``root`` instead (exclusive with the others).
        test_categories_json: prompt the test split with this COCO categories file instead of its own: the
            same classes in another order, or with extra names absent from the images (it must hold every
            category id of the ground truth). Relative to the working directory.
        predict_image_dir: folder of images for ``predict`` (relative to the working directory).
        predict_class_names: thing class names to segment at predict time (``"tv, monitor"`` is one
            class with two prompt names); with ``predict_stuff_names``, any vocabulary. Neither: the
            training vocabulary.
        predict_stuff_names: stuff class names to segment at predict time.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size; None uses ``batch_size``.
        num_workers: dataloader worker processes (0 loads in the main process).
        pin_memory: pin batches in page-locked memory (for GPU training).
        crop_size: side of the square training crop, pixels.
        min_scale: smallest training short side, as a multiple of ``crop_size``.
        max_scale: largest training short side, as a multiple of ``crop_size``.
        eval_size: long side of evaluation/prediction images, pixels; None keeps the original size.
        eval_at_original_size: score val/test predictions resized back to each image's original size
            against the untransformed ground truth, as official evaluations do; False scores at ``eval_size``.
        size_divisibility: pad every batch to a multiple of this (the backbone's largest stride).
        seed: seed of the training order and augmentation.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        train: PanopticSplit | None = None,
        val: PanopticSplit | None = None,
        test: PanopticSplit | None = None,
        synthetic: SyntheticData | None = None,
        world: WorldData | None = None,
        test_categories_json: str | None = None,
        predict_image_dir: str | None = None,
        predict_class_names: list[str] | None = None,
        predict_stuff_names: list[str] | None = None,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        crop_size: int = 640,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        eval_size: int | None = 640,
        eval_at_original_size: bool = True,
        size_divisibility: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        splits_given = any(s is not None for s in (train, val, test))
        if sum((synthetic is not None, world is not None, splits_given)) > 1:
            raise ValueError(
                "Give either `synthetic` or `world` or the `train`/`val`/`test` splits, not several."
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"Batch sizes must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.root = Path(root if root is not None else os.environ.get("OMTSEG_DATASETS", "data"))
        self.synthetic = synthetic
        self.world = world
        if synthetic is not None:
            train, val, test = (self._synthetic_split(split) for split in ("train", "val", "test"))
        if world is not None:
            train, val = world_split_paths("", "train"), world_split_paths("", "val")
            test = world_split_paths("", world.test_split)
        self.splits = {
            name: split.under(self.root) if split is not None else None
            for name, split in (("train", train), ("val", val), ("test", test))
        }
        if test_categories_json is not None:
            test_split = self.splits["test"]
            if test_split is None:
                raise ValueError("test_categories_json is given but no test split is configured.")
            self.splits["test"] = replace(test_split, categories_json=str(Path(test_categories_json)))
        self.predict_image_dir = predict_image_dir
        self.predict_class_names = predict_class_names
        self.predict_stuff_names = predict_stuff_names
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transform = TrainTransform(crop_size=crop_size, min_scale=min_scale, max_scale=max_scale)
        self.eval_transform = EvalTransform(
            size=eval_size, size_divisibility=size_divisibility, keep_original=eval_at_original_size
        )
        self.eval_size = eval_size  # recorded in checkpoints as the default image size
        self.size_divisibility = size_divisibility
        self.seed = seed
        self.datasets: dict[str, CocoPanopticDataset | ImageFolderDataset] = {}

    def _synthetic_split(self, split: str) -> PanopticSplit:
        # The same layout make_synthetic_panoptic writes, relative to root.
        return PanopticSplit(
            image_dir=f"images/{split}",
            panoptic_dir=f"panoptic/{split}",
            panoptic_json=f"panoptic_{split}.json",
            categories_json="categories.json",
        )

    def prepare_data(self) -> None:
        """Write the synthetic dataset or the world when configured (cheap when it already exists).

        Not for ``predict``, which reads only its image folder: a prediction run from another directory
        must not write a dataset there.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.predicting:
            return
        if self.world is not None:
            w = self.world
            for split, n in (("train", w.num_train), ("val", w.num_val), (w.test_split, w.num_test)):
                if n > 0:
                    make_world_split(self.root, split, n, image_size=w.image_size, seed=w.seed)
        if self.synthetic is None:
            return
        s = self.synthetic
        for split, n in (("train", s.num_train), ("val", s.num_val), ("test", s.num_test)):
            if n > 0:
                make_synthetic_panoptic(self.root, n, image_size=s.image_size, seed=s.seed, split=split)

    @property
    def vocabulary(self) -> Vocabulary:
        """The class list of the configured splits (train's, else val's, else test's)."""
        for name in ("train", "val", "test"):
            if name in self.datasets:
                return self._labelled(name).vocabulary
        if self.synthetic is not None:
            return synthetic_vocabulary()  # known without generating the data (predict does not)
        for split in self.splits.values():
            if split is not None:
                return read_categories_json(split.categories_json or split.panoptic_json)
        raise ValueError("No train/val/test split is configured, so there is no dataset vocabulary.")

    @property
    def predict_vocabulary(self) -> Vocabulary:
        """The classes to segment in ``predict``: the configured names, else :attr:`vocabulary`."""
        things = list(self.predict_class_names or [])
        stuff = list(self.predict_stuff_names or [])
        if not things and not stuff:
            return self.vocabulary
        things, stuff = merge_duplicate_classes(things, stuff, source="data.predict_class_names")
        return Vocabulary.from_names(things + stuff, is_thing=[True] * len(things) + [False] * len(stuff))

    def _labelled(self, name: str) -> CocoPanopticDataset:
        dataset = self.datasets[name]
        if not isinstance(dataset, CocoPanopticDataset):
            raise ValueError(
                f"The {name} dataset is a folder of unlabelled images and has no vocabulary; "
                "pass the vocabulary explicitly."
            )
        return dataset

    def _dataset(self, name: str, transform: Transform) -> CocoPanopticDataset:
        split = self.splits[name]
        if split is None:
            raise ValueError(
                f"No {name} split is configured; set data.{name} (image_dir, panoptic_dir, panoptic_json) "
                "or data.synthetic."
            )
        return CocoPanopticDataset(
            image_dir=split.image_dir,
            panoptic_dir=split.panoptic_dir,
            panoptic_json=split.panoptic_json,
            categories_json=split.categories_json,
            transform=transform,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs (``fit``, ``validate``, ``test``, ``predict``; None: all
        that are configured). Fit without a ``val`` split trains without validation."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        checked: list[str] = []
        if stage is not None and stage not in wanted:
            raise ValueError(f"Unknown stage {stage!r}; use one of {sorted(wanted)} or None.")
        for name in wanted[stage] if stage is not None else ("train", "val", "test", "predict"):
            configured = (
                self.predict_image_dir is not None if name == "predict" else self.splits[name] is not None
            )
            optional = stage is None or (stage == "fit" and name == "val")
            if name in self.datasets or (optional and not configured):
                continue
            if name == "predict":
                if self.predict_image_dir is None:
                    raise ValueError(
                        "No images to predict on; set data.predict_image_dir to a folder of jpg/png."
                    )
                self.datasets[name] = ImageFolderDataset(
                    image_dir=self.predict_image_dir, transform=self.eval_transform
                )
            else:
                transform = self.train_transform if name == "train" else self.eval_transform
                self.datasets[name] = self._dataset(name, transform)
                checked.append(name)
        self._check_files(checked)

    def _check_files(self, names: list[str]) -> None:
        """Raise with every problem of the splits' files at once (headers only, so fast), before training
        or evaluation reads the first one."""
        problems = [p for name in names for p in self._labelled(name).check_files()]
        if problems:
            shown = "\n  ".join(problems[:MAX_LISTED])
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise ValueError(
                f"{len(problems)} problem(s) with the dataset files of {'/'.join(names)} (fix or remove "
                f"these images and their JSON entries):\n  {shown}{more}"
            )

    def _loader(self, name: str, batch_size: int, vocabulary: Vocabulary | None = None) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError(
                f"The {name} dataset is not set up; call setup() with the matching stage first."
            )
        dataset = self.datasets[name]
        # Training draws its order and augmentation from (seed, epoch); evaluation keeps file order and,
        # across processes, evaluates each image once (prediction is split by Lightning, unpadded too).
        sampler: Sampler | None = None
        if name == "train":
            sampler = SeededSampler(len(dataset), seed=self.seed)
        elif name in ("val", "test"):
            sampler = eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(
                collate_readable if name == "predict" else collate,
                vocabulary=vocabulary if vocabulary is not None else self._labelled(name).vocabulary,
                size_divisibility=self.size_divisibility,
            ),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if "val" not in self.datasets and self.splits["val"] is None:
            return []  # fit without a validation split: Lightning skips validation
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, self.predict_vocabulary)
