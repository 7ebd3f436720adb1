"""Region captions for ``omtseg fit`` of the segment captioner: one LightningDataModule over every source.

Exactly one source is given, its relative paths under ``root`` (``$OMTSEG_DATASETS``, else ``data``):

- ``world``: the open-vocabulary world's panoptic splits (:mod:`omtseg.data.world`), generated on first use,
  every segment described by a synthetic caption (the demo's captioner recipe, runnable on a CPU).
- ``panoptic``: any COCO-panoptic-format splits with every segment captioned by its class name through
  ``template``; ``"{name}"`` is SCA's weak supervision from panoptic and detection data (bare class names).
- ``visual_genome``: Visual Genome region descriptions on the dense-captioning split file
  (:class:`~omtseg.data.regions.VisualGenomeRegions`), the split VG results are reported on.
- ``refcoco``: RefCOCO / RefCOCO+ / RefCOCOg referring expressions
  (:class:`~omtseg.data.regions.RefCocoRegions`).

The frozen segmenter runs with a vocabulary (its text branch needs one; the captioner reads only image
features and decoder queries): :attr:`RegionCaptionDataModule.class_names`, which ``omtseg fit`` hands to the
captioner's module.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from omtseg.data.caption_text import WEAK_TEMPLATE
from omtseg.data.coco_panoptic import CocoPanopticDataset, PanopticSplit
from omtseg.data.region_jitter import JitteredRegions, LargeScaleJitter
from omtseg.data.regions import PanopticRegionCaptions, RefCocoRegions, VisualGenomeRegions, collate_regions
from omtseg.data.transforms import EvalTransform
from omtseg.data.vocabulary import read_categories_json
from omtseg.data.world import make_world_split, world_categories, world_split_paths

SPLITS = ("train", "val", "test")
VG_IMAGE_DIRS = ("VG_100K", "VG_100K_2")
COCO_CATEGORIES = resources.files("omtseg") / "assets" / "coco_sample" / "panoptic_coco_categories.json"
"""The 133 COCO panoptic classes: the segmenter's vocabulary for sources without classes (VG, RefCOCO)."""


@dataclass
class WorldRegions:
    """The open-vocabulary world's seen-class splits as region captions (generated under ``root``).

    The counts are those of ``configs/data/world.yaml``, so the segmenter's world is reused, not rewritten.

    Attributes:
        num_train: training images.
        num_val: validation images.
        num_test: test images (seen classes).
        image_size: side of the square images, in pixels.
        seed: the world's seed.
        captions: ``synthetic`` (each segment's colour, size and place) or ``class_name`` (``template``).
        template: the class-name caption (with ``captions: class_name``).
    """

    num_train: int = 800
    num_val: int = 60
    num_test: int = 100
    image_size: int = 64
    seed: int = 0
    captions: Literal["synthetic", "class_name"] = "synthetic"
    template: str = WEAK_TEMPLATE


@dataclass
class PanopticRegions:
    """COCO-panoptic-format splits whose segments are captioned with their class names (weak supervision).

    Attributes:
        train: training split, or None.
        val: validation split, or None.
        test: test split, or None.
        template: the caption of a segment, over its class name; ``"{name}"`` (SCA) is the bare name.
    """

    train: PanopticSplit | None = None
    val: PanopticSplit | None = None
    test: PanopticSplit | None = None
    template: str = "{name}"


@dataclass
class VisualGenomeFiles:
    """Visual Genome in its released layout, split as dense captioning is evaluated.

    Attributes:
        region_descriptions: ``region_descriptions.json``.
        image_dirs: folders of ``<image_id>.jpg``.
        split_file: DenseCap's ``densecap_splits.json`` (train/val/test image ids).
        max_regions: regions per image at most (the first ones); None keeps all (see ``regions_per_image``
            of the captioner's module for SCA's random 16 per step).
    """

    region_descriptions: str = "visual_genome/region_descriptions.json"
    image_dirs: list[str] = field(default_factory=lambda: [f"visual_genome/{d}" for d in VG_IMAGE_DIRS])
    split_file: str = "visual_genome/densecap_splits.json"
    max_regions: int | None = None


@dataclass
class RefCocoFiles:
    """Referring expressions (RefCOCOg: ``refs(umd).p``) over COCO train2014, split by the refs' ``split``.

    Attributes:
        refs: the refs pickle.
        instances: the matching ``instances.json``.
        image_dir: the COCO ``train2014`` folder.
    """

    refs: str = "refcocog/refs(umd).p"
    instances: str = "refcocog/instances.json"
    image_dir: str = "coco/train2014"


class RegionCaptionDataModule(LightningDataModule):
    """Train/val/test region captions from one source (see the module docstring).

    Args:
        root: datasets root; the sources' relative paths resolve against it and ``world`` writes there.
            None: ``$OMTSEG_DATASETS``, else ``data``.
        world: the open-vocabulary world.
        panoptic: COCO-panoptic-format splits captioned by class name.
        visual_genome: Visual Genome with the dense-captioning splits.
        refcoco: referring expressions.
        class_names: the vocabulary the frozen segmenter runs with; None: the source's own classes (world,
            panoptic: the training split's), else the 133 COCO panoptic classes.
        batch_size: training images per step (all their regions, or ``regions_per_image`` of them).
        eval_batch_size: validation/test images per step; None uses ``batch_size``.
        num_workers: dataloader worker processes (0 loads in the main process).
        max_size: longer image side in pixels (1024 in SCA); None keeps the original size.
        jitter: large-scale jitter of training images (SCA: size 1024, scales 0.1-2.0); None for none.
        size_divisibility: pad every batch to a multiple of this (the backbone's largest stride).
        seed: seed of the training order.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        world: WorldRegions | None = None,
        panoptic: PanopticRegions | None = None,
        visual_genome: VisualGenomeFiles | None = None,
        refcoco: RefCocoFiles | None = None,
        class_names: list[str] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_size: int | None = 1024,
        jitter: LargeScaleJitter | None = None,
        size_divisibility: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        given = [n for n, s in (("world", world), ("panoptic", panoptic), ("visual_genome", visual_genome),
                                ("refcoco", refcoco)) if s is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                f"Give exactly one region-caption source of world, panoptic, visual_genome, refcoco; got "
                f"{given or 'none'}."
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"Batch sizes must be >= 1, got {batch_size} and {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.root = Path(root if root is not None else os.environ.get("OMTSEG_DATASETS", "data"))
        self.world = world
        self.panoptic = panoptic
        self.visual_genome = visual_genome
        self.refcoco = refcoco
        self._class_names = class_names
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.max_size = max_size
        self.jitter = jitter
        self.size_divisibility = size_divisibility
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        """The vocabulary the segmenter runs with (see ``class_names``); read without loading any images."""
        if self._class_names is not None:
            return list(self._class_names)
        if self.world is not None:
            return [c["name"] for c in world_categories(("seen",))]  # the world's training classes
        if self.panoptic is not None:
            split = next((s for s in (self.panoptic.train, self.panoptic.val, self.panoptic.test) if s), None)
            if split is None:
                raise ValueError("The panoptic source names no split; give panoptic.train (or val, test).")
            split = split.under(self.root)
            return list(read_categories_json(split.categories_json or split.panoptic_json).names)
        return list(read_categories_json(str(COCO_CATEGORIES)).names)

    def prepare_data(self) -> None:
        """Write the world's splits when it is the source (cheap when they exist)."""
        if self.world is None:
            return
        w = self.world
        for split, n in zip(SPLITS, (w.num_train, w.num_val, w.num_test), strict=True):
            if n > 0:
                make_world_split(self.root, split, n, image_size=w.image_size, seed=w.seed)

    def _panoptic(self, split: PanopticSplit, captions: str, template: str) -> PanopticRegionCaptions:
        base = CocoPanopticDataset(**asdict(split), transform=EvalTransform(size=self.max_size))
        return PanopticRegionCaptions(
            dataset=base, vocabulary=base.vocabulary, captions=captions, template=template
        )

    def _dataset(self, name: str) -> Dataset | None:
        """The ``name`` split of the source, or None when it has none."""
        if self.world is not None:
            n = {"train": self.world.num_train, "val": self.world.num_val, "test": self.world.num_test}[name]
            if n == 0:
                return None
            split = world_split_paths(self.root, name)
            return self._panoptic(split, self.world.captions, self.world.template)
        if self.panoptic is not None:
            split = getattr(self.panoptic, name)
            if split is None:
                return None
            return self._panoptic(split.under(self.root), "class_name", self.panoptic.template)
        if self.visual_genome is not None:
            vg = self.visual_genome
            return VisualGenomeRegions(
                region_descriptions=self.root / vg.region_descriptions,
                image_dirs=[self.root / d for d in vg.image_dirs],
                split_file=self.root / vg.split_file,
                split=name,
                max_size=self.max_size,
                max_regions=vg.max_regions,
            )
        assert self.refcoco is not None
        ref = self.refcoco
        return RefCocoRegions(
            refs=self.root / ref.refs,
            instances=self.root / ref.instances,
            image_dir=self.root / ref.image_dir,
            split=name,
            max_size=self.max_size,
        )

    def setup(self, stage: str | None = None) -> None:
        names = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for name in names:
            if name not in self.datasets and (dataset := self._dataset(name)) is not None:
                self.datasets[name] = dataset
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError("omtseg fit needs a training split; the region-caption source has none.")
        if self.jitter is not None and "train" in self.datasets:
            if not isinstance(self.datasets["train"], JitteredRegions):
                self.datasets["train"] = JitteredRegions(dataset=self.datasets["train"], jitter=self.jitter)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise ValueError(f"No {name} split in this region-caption source; configure one to run on it.")
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=partial(collate_regions, size_divisibility=self.size_divisibility),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        # No val split: fit runs without validation (Lightning skips an empty list).
        return self._loader("val", self.eval_batch_size, shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
