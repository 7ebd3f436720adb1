"""COCO panoptic datasets: a panoptic JSON, a folder of panoptic PNGs and a folder of images.

Per image the loader yields a :class:`~omtseg.types.Sample` whose targets hold one binary mask and one
contiguous class index per segment; ``iscrowd`` segments go to ``crowd_*`` (ignored in training and PQ,
as panopticapi does) and PNG id 0 becomes ``void``. The semantic map is ``targets.semantic()`` of the same
masks, so panoptic and semantic ground truth cannot disagree.

Annotation records are kept as one pickled byte buffer rather than a list of dicts: dataloader workers
share it copy-on-write without touching reference counts, so a 118k-image JSON is not copied per worker.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from omtseg.data.vocabulary import category_index, read_categories_json, vocabulary_from_categories
from omtseg.io import image_size, load_json, read_image, read_panoptic_png
from omtseg.types import ImageInfo, Sample, Targets, Vocabulary

Transform = Callable[[Sample, torch.Generator | None], Sample]
"""A sample transform; random ones draw from the given generator (see :mod:`omtseg.data.transforms`)."""


@dataclass
class PanopticSplit:
    """Where one split of a COCO-panoptic-format dataset lives.

    Attributes:
        image_dir: folder of the images (``coco/val2017``).
        panoptic_dir: folder of the panoptic PNGs (``coco/panoptic_val2017``).
        panoptic_json: the panoptic JSON (``coco/annotations/panoptic_val2017.json``).
        categories_json: a separate categories file (``panoptic_coco_categories.json``); None takes the
            panoptic JSON's ``categories``.
    """

    image_dir: str
    panoptic_dir: str
    panoptic_json: str
    categories_json: str | None = None

    def under(self, root: str | os.PathLike[str]) -> PanopticSplit:
        """The same split with relative paths resolved against ``root`` (absolute paths unchanged)."""

        def join(p: str) -> str:
            return str(Path(root) / p)

        return PanopticSplit(
            image_dir=join(self.image_dir),
            panoptic_dir=join(self.panoptic_dir),
            panoptic_json=join(self.panoptic_json),
            categories_json=join(self.categories_json) if self.categories_json is not None else None,
        )


class _PackedRecords:
    """A list of picklable records stored as one numpy byte buffer (see the module docstring)."""

    def __init__(self, records: list[Any]) -> None:
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> Any:
        start = int(self._ends[i - 1]) if i > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[i])].tobytes())


class CocoPanopticDataset(Dataset):
    """One split of a COCO-panoptic-format dataset.

    Items are :class:`~omtseg.types.Sample` with targets at the transformed size. An item may be asked
    for as ``index`` or as ``(index, seed)``: the seed drives the transform's random draws (the
    datamodule's sampler supplies it, so augmentation does not depend on worker count).

    Args:
        image_dir: folder of the images.
        panoptic_dir: folder of the panoptic PNGs.
        panoptic_json: the panoptic JSON (``images``, ``annotations``, optionally ``categories``).
        categories_json: a separate categories file; None takes the panoptic JSON's ``categories``.
        transform: applied to each loaded sample; None returns samples at their original size.

    Raises:
        FileNotFoundError: a folder or JSON file is missing.
        ValueError: the JSON is inconsistent (an annotation without an image, an unknown category id,
            duplicate segment ids) or has no categories.
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike[str],
        panoptic_dir: str | os.PathLike[str],
        panoptic_json: str | os.PathLike[str],
        categories_json: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        self.panoptic_json = Path(panoptic_json)
        for folder, what in ((self.image_dir, "Image folder"), (self.panoptic_dir, "Panoptic PNG folder")):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{what} not found: {folder}. Check the split paths and datasets root."
                )
        data = load_json(self.panoptic_json, what="Panoptic JSON")
        if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
            raise ValueError(
                f"{self.panoptic_json} is not a COCO panoptic JSON (needs 'images' and 'annotations'); "
                "give the panoptic_{split}.json file."
            )
        if categories_json is not None:
            self.vocabulary: Vocabulary = read_categories_json(categories_json)
        elif "categories" in data:
            self.vocabulary = vocabulary_from_categories(data["categories"], source=str(self.panoptic_json))
        else:
            raise ValueError(
                f"{self.panoptic_json} has no 'categories'; pass categories_json "
                "(e.g. panoptic_coco_categories.json)."
            )
        self.transform = transform
        self._class_of = category_index(self.vocabulary)
        self._records = _PackedRecords(self._parse(data))

    def _parse(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        images = {img["id"]: img for img in data["images"]}
        records = []
        for ann in data["annotations"]:
            image_id = ann["image_id"]
            if image_id not in images:
                raise ValueError(
                    f"{self.panoptic_json}: annotation {ann.get('file_name')!r} refers to image id "
                    f"{image_id}, which is not in 'images'; the JSON is incomplete, use the matching "
                    "panoptic JSON."
                )
            segments = []
            for seg in ann["segments_info"]:
                if seg["category_id"] not in self._class_of:
                    raise ValueError(
                        f"{self.panoptic_json}: segment {seg['id']} of image {image_id} has unknown category "
                        f"id {seg['category_id']}; add it to the categories or fix the annotation."
                    )
                segments.append(
                    (int(seg["id"]), self._class_of[seg["category_id"]], bool(seg.get("iscrowd", 0)))
                )
            if len({s[0] for s in segments}) != len(segments):
                raise ValueError(
                    f"{self.panoptic_json}: image {image_id} lists a segment id twice; segment ids must be "
                    "unique per image."
                )
            img = images[image_id]
            records.append(
                {
                    "image_id": image_id,
                    "file_name": img["file_name"],
                    "png": ann["file_name"],
                    "size": (img.get("height"), img.get("width")),
                    "segments": segments,
                }
            )
        return records

    def __len__(self) -> int:
        return len(self._records)

    def check_files(self, max_workers: int = 8) -> list[str]:
        """Every problem with the split's files, found from file headers only (fast, before any training):
        a missing or unreadable image or PNG, and sizes that disagree with the JSON or with each other.

        Returns:
            One line per problem (empty when the files are fine).
        """

        def check(index: int) -> list[str]:
            rec = self._records[index]
            paths = {"image": self.image_dir / rec["file_name"], "PNG": self.panoptic_dir / rec["png"]}
            sizes, problems = {}, []
            for kind, path in paths.items():
                try:
                    sizes[kind] = image_size(path)
                except FileNotFoundError:
                    problems.append(f"{path}: {kind} of image {rec['image_id']} not found")
                except ValueError as e:
                    reason = e.__cause__ or e
                    problems.append(f"{path}: {kind} of image {rec['image_id']} unreadable ({reason})")
            listed = tuple(rec.get("size") or ())
            known = len(listed) == 2 and None not in listed
            for kind, (h, w) in sizes.items():
                if known and (h, w) != listed:
                    problems.append(
                        f"{paths[kind]}: {kind} is {w}x{h} but {self.panoptic_json.name} says "
                        f"{listed[1]}x{listed[0]}"
                    )
            if not known and len(sizes) == 2 and sizes["image"] != sizes["PNG"]:
                (ih, iw), (ph, pw) = sizes["image"], sizes["PNG"]
                problems.append(f"{paths['PNG']}: PNG is {pw}x{ph} but its image is {iw}x{ih}")
            return problems

        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return [p for found in pool.map(check, range(len(self))) for p in found]

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.load(index)
        if self.transform is None:
            return sample
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.transform(sample, generator)

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index`` at the image's original size."""
        rec = self._records[index]
        image_path = self.image_dir / rec["file_name"]
        png_path = self.panoptic_dir / rec["png"]
        if not png_path.is_file():
            raise FileNotFoundError(
                f"Panoptic PNG not found: {png_path} (image {rec['image_id']} in {self.panoptic_json}). "
                "Check panoptic_dir, or unzip the panoptic PNG archive there."
            )
        image = read_image(image_path)  # (H, W, 3) uint8
        ids = read_panoptic_png(png_path)  # (H, W) int64
        if ids.shape != image.shape[:2]:
            raise ValueError(
                f"{png_path} is {ids.shape[1]}x{ids.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; the PNG belongs to another image, or the image was "
                "resized."
            )
        targets = self._targets(ids, rec, png_path)
        h, w = image.shape[:2]
        info = ImageInfo(
            image_id=rec["image_id"], file_name=rec["file_name"], orig_size=(h, w), resized_size=(h, w)
        )
        return Sample(image=torch.from_numpy(image).permute(2, 0, 1).contiguous(), targets=targets, info=info)

    def _targets(self, ids: np.ndarray, rec: dict[str, Any], png_path: Path) -> Targets:
        present, inverse = np.unique(ids, return_inverse=True)
        segments = rec["segments"]
        listed = {s[0] for s in segments}
        extra = sorted(set(present.tolist()) - listed - {0})
        if extra:
            raise ValueError(
                f"{png_path} contains segment ids {extra[:10]} that {self.panoptic_json} does not list for "
                f"image {rec['image_id']}; the PNG and JSON do not match (use the PNGs of this JSON)."
            )
        slot = torch.from_numpy(inverse.reshape(ids.shape))  # (H, W) position in `present`
        position = {int(v): k for k, v in enumerate(present.tolist())}

        def planes(group: list[tuple[int, int, bool]]) -> torch.Tensor:
            # A listed segment absent from the PNG (the reference ADE20K-150 files keep stuff that instances
            # cover completely) is an empty mask: panopticapi counts it as a false negative, and so do we.
            where = torch.tensor([position.get(s[0], -1) for s in group], dtype=torch.int64)
            return slot[None] == where[:, None, None]  # (N, H, W)

        regular = [s for s in segments if not s[2]]
        crowd = [s for s in segments if s[2]]
        return Targets(
            labels=torch.tensor([s[1] for s in regular], dtype=torch.int64),
            masks=planes(regular),
            is_thing=torch.tensor([self.vocabulary.is_thing[s[1]] for s in regular], dtype=torch.bool),
            crowd_labels=torch.tensor([s[1] for s in crowd], dtype=torch.int64),
            crowd_masks=planes(crowd),
            void=torch.from_numpy(ids == 0),
            segment_ids=torch.tensor([s[0] for s in regular], dtype=torch.int64),
        )
