"""Image-caption corpora for BEiT-3-style pre-training (COCO captions format), and their datamodule.

A corpus is an image folder plus a COCO-captions JSON (``images``: ``id``, ``file_name``; ``annotations``:
``image_id``, ``caption``); every (image, caption) pair is one sample. The world's caption corpus
(:mod:`omtseg.data.world`, split ``pretrain``) is generated under ``root`` when configured.
Tokenisation belongs to the model side (the BEiT-3 tokenizer), so batches carry caption strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from omtseg.data.world import make_world_split
from omtseg.io import load_json, read_image


@dataclass
class CaptionBatch:
    """A batch of image-caption pairs.

    Attributes:
        images: (B, 3, H, W) uint8 images of one size.
        captions: B caption strings.
        image_ids: B image ids of the corpus.
    """

    images: Tensor
    captions: list[str]
    image_ids: list[int]


class ImageCaptionDataset(Dataset):
    """Every (image, caption) pair of a COCO-captions JSON.

    Args:
        image_dir: folder of the images named in the JSON.
        captions_json: COCO captions file.

    Raises:
        FileNotFoundError: the JSON or the folder is missing.
        ValueError: the JSON lacks ``images``/``annotations`` or a caption names an unknown image.
    """

    def __init__(self, *, image_dir: str | os.PathLike[str], captions_json: str | os.PathLike[str]) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"Caption corpus image folder not found: {self.image_dir}.")
        data = load_json(captions_json, what="caption corpus JSON")
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(
                f"{captions_json} is not a COCO captions file (needs 'images' and 'annotations')."
            )
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        self.pairs: list[tuple[int, str, str]] = []
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in files:
                raise ValueError(f"{captions_json}: caption {ann.get('id')} names unknown image {image_id}.")
            self.pairs.append((image_id, files[image_id], str(ann["caption"])))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, str, int]:
        image_id, name, caption = self.pairs[index]
        image = torch.from_numpy(read_image(self.image_dir / name)).permute(2, 0, 1).contiguous()
        return image, caption, image_id


def collate_captions(items: list[tuple[Tensor, str, int]]) -> CaptionBatch:
    """Stack images (all of one size) and list the captions."""
    sizes = {tuple(im.shape) for im, _, _ in items}
    if len(sizes) != 1:
        raise ValueError(f"Caption corpus images must share one size to batch, got {sorted(sizes)}.")
    return CaptionBatch(
        images=torch.stack([im for im, _, _ in items]),
        captions=[c for _, c, _ in items],
        image_ids=[i for _, _, i in items],
    )


@dataclass
class WorldCorpus:
    """Generate the open-vocabulary world's caption corpus under ``root``.

    Attributes:
        num_images: corpus images (two captions each).
        image_size: side of the square images, pixels.
        seed: the world's seed.
    """

    num_images: int = 6000
    image_size: int = 64
    seed: int = 0


class CaptionCorpusDataModule(LightningDataModule):
    """Image-caption pairs for pre-training, the last ``val_images`` images held out for validation.

    Args:
        root: folder of the corpus (``images/pretrain``, ``captions_pretrain.json`` for the world).
        world: generate the world's corpus under ``root`` (else ``image_dir``/``captions_json`` must exist).
        image_dir: image folder, relative to ``root`` (default: the world's).
        captions_json: captions file, relative to ``root`` (default: the world's).
        val_images: images held out (all their captions) for validation.
        batch_size: pairs per training batch.
        num_workers: loader processes.
        seed: seed of the training order.
    """

    def __init__(
        self,
        *,
        root: str = "data/world",
        world: WorldCorpus | None = None,
        image_dir: str = "images/pretrain",
        captions_json: str = "captions_pretrain.json",
        val_images: int = 200,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_images < 0 or num_workers < 0:
            raise ValueError(
                f"Need batch_size >= 1, val_images >= 0, num_workers >= 0; got {batch_size}, {val_images}, "
                f"{num_workers}."
            )
        self.root = Path(root)
        self.world = world
        self.image_dir = self.root / image_dir
        self.captions_json = self.root / captions_json
        self.val_images = val_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, Any] = {}

    def prepare_data(self) -> None:
        """Write the world's corpus when configured (nothing when it is already complete)."""
        if self.world is not None:
            w = self.world
            make_world_split(self.root, "pretrain", w.num_images, image_size=w.image_size, seed=w.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        full = ImageCaptionDataset(image_dir=self.image_dir, captions_json=self.captions_json)
        image_ids = sorted({i for i, _, _ in full.pairs})
        held_out = set(image_ids[len(image_ids) - self.val_images :]) if self.val_images else set()
        if len(held_out) >= len(image_ids):
            raise ValueError(
                f"val_images={self.val_images} leaves no training image of {len(image_ids)}; hold out fewer."
            )
        train = [k for k, (i, _, _) in enumerate(full.pairs) if i not in held_out]
        val = [k for k, (i, _, _) in enumerate(full.pairs) if i in held_out]
        self.datasets = {"train": Subset(full, train), "val": Subset(full, val)}

    def train_captions(self) -> list[str]:
        """Every training caption (the pre-training module derives its output vocabulary from them)."""
        self.setup("fit")
        train = self.datasets["train"]
        return [train.dataset.pairs[k][2] for k in train.indices]

    def image_texts(self) -> dict[int, str]:
        """Every image's captions joined by newlines, by image id (what an image is known to show)."""
        self.setup("fit")
        texts: dict[int, list[str]] = {}
        for image_id, _, caption in self.datasets["train"].dataset.pairs:
            texts.setdefault(image_id, []).append(caption)
        return {i: "\n".join(t) for i, t in texts.items()}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.datasets["train"],
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_captions,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not len(self.datasets["val"]):
            return []
        return DataLoader(
            self.datasets["val"],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_captions,
        )
