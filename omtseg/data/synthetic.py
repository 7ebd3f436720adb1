"""A deterministic synthetic COCO-panoptic dataset: textured stuff bands under overlapping shapes.

It is the embedded default for the demo and the tests: a tiny model learns it in minutes on a CPU, so
the whole pipeline (fit, test, predict, PQ) can be exercised without a real dataset. Every class is
identifiable from local appearance: stuff classes are distinct color families with distinct textures;
thing classes are distinct shapes with distinct colors, each instance with its own shade and a dark
outline, so touching or overlapping instances of one class stay separable. Some images hold a crowd
cluster (``iscrowd``) and a few void pixels, as COCO does.

Layout under ``root`` (what :class:`~omtseg.data.coco_panoptic.CocoPanopticDataset` reads)::

    images/<split>/000000.png     RGB images
    panoptic/<split>/000000.png   panoptic PNGs (id = R + 256 G + 256^2 B, 0 = void)
    panoptic_<split>.json         images, annotations (segments_info), categories
    categories.json               the categories alone
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from omtseg.data.coco_panoptic import PanopticSplit
from omtseg.data.render import paint_thing, shape_mask, texture
from omtseg.data.vocabulary import vocabulary_from_categories
from omtseg.io import id2rgb, load_json, save_image, save_json
from omtseg.types import Vocabulary

_VERSION = 1  # bump when the rendering changes, so stale datasets are regenerated

# (id, name, is_thing, base RGB, shape or texture); ids are not contiguous, as in COCO.
_CLASSES: tuple[tuple[int, str, bool, tuple[int, int, int], str], ...] = (
    (1, "ball", True, (215, 40, 40), "circle"),
    (2, "box", True, (135, 65, 190), "square"),
    (3, "traffic cone", True, (250, 135, 20), "triangle"),
    (4, "starfish", True, (240, 210, 35), "star"),
    (5, "donut", True, (240, 120, 180), "ring"),
    (11, "sky", False, (135, 185, 240), "gradient"),
    (12, "grass", False, (55, 145, 55), "streaks"),
    (13, "sand", False, (215, 190, 145), "speckle"),
    (14, "water", False, (25, 100, 125), "waves"),
    (15, "wall", False, (150, 70, 55), "bricks"),
    (16, "road", False, (70, 70, 76), "asphalt"),
)
_SKY_LIKE = (11, 15)  # top band
_GROUND = (12, 13, 14, 16)  # lower bands
_BY_ID = {c[0]: c for c in _CLASSES}


def synthetic_categories() -> list[dict[str, Any]]:
    """The categories as COCO records (``id``, ``name``, ``isthing``, ``color``, ``supercategory``)."""
    return [
        {"id": cid, "name": name, "isthing": int(thing), "color": list(color), "supercategory": shape}
        for cid, name, thing, color, shape in _CLASSES
    ]


def synthetic_vocabulary() -> Vocabulary:
    """The synthetic dataset's :class:`Vocabulary` (5 things, 6 stuff)."""
    return vocabulary_from_categories(synthetic_categories(), source="synthetic categories")


def _render(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One image (S, S, 3) uint8, its id map (S, S) int64 and its segments_info."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), dtype=np.float32)
    ids = np.zeros((size, size), dtype=np.int64)
    crowd: set[int] = set()

    # Stuff: a top band (sky or wall) over one or two ground bands with wavy borders.
    n_ground = int(rng.integers(1, 3))
    stuff = [int(rng.choice(_SKY_LIKE))] + [int(c) for c in rng.choice(_GROUND, n_ground, replace=False)]
    borders = np.sort(rng.uniform(0.25, 0.8, len(stuff) - 1)) * size
    band = np.zeros((size, size), dtype=np.int64)
    for b, y0 in enumerate(borders):
        wave = y0 + 0.05 * size * np.sin(xx / size * rng.uniform(3, 9) + rng.uniform(0, 2 * np.pi))
        band[yy >= wave] = b + 1
    for b, cid in enumerate(stuff):
        region = band == b
        img[region] = texture(_BY_ID[cid][4], _BY_ID[cid][3], rng, yy, xx)[region]
        ids[region] = cid * 256

    things = [c for c in _CLASSES if c[2]]
    if rng.random() < 0.15:  # a crowd: a tight cluster of small things, annotated as one region
        cls = things[int(rng.integers(len(things)))]
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        seg_id = cls[0] * 256 + 255
        for _ in range(int(rng.integers(6, 11))):
            y, x, r = (
                cy + rng.normal(0, 0.06 * size),
                cx + rng.normal(0, 0.06 * size),
                rng.uniform(0.025, 0.04) * size,
            )
            m = shape_mask(cls[4], y, x, r, rng.uniform(0, np.pi), yy, xx)
            paint_thing(img, m, cls[3], cls[4], rng, yy, xx, y, x, r)
            ids[m] = seg_id
        crowd.add(seg_id)

    placed: list[tuple[int, int]] = []  # (segment id, full area) of instances so far
    for k in range(int(rng.integers(1, 6))):
        for _ in range(20):  # resample until no earlier instance is hidden too much
            cls = things[int(rng.integers(len(things)))]
            r = rng.uniform(0.07, 0.22) * size
            cy, cx = rng.uniform(0.5 * r, size - 0.5 * r, 2)
            m = shape_mask(cls[4], cy, cx, r, rng.uniform(0, np.pi), yy, xx)
            area = int(m.sum())
            if area < 40:
                continue
            if all(int(((ids == sid) & ~m).sum()) >= max(40, 0.4 * a) for sid, a in placed):
                break
        else:
            continue
        seg_id = cls[0] * 256 + k + 1
        paint_thing(img, m, cls[3], cls[4], rng, yy, xx, cy, cx, r)
        ids[m] = seg_id
        placed.append((seg_id, area))

    if rng.random() < 0.3:  # a few void pixels: a small unlabelled blob
        cy, cx = rng.uniform(0, size, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(1.5, 3.5) ** 2
        img[m] = rng.uniform(90, 160)
        ids[m] = 0

    img += rng.normal(0, 3, img.shape)
    present, areas = np.unique(ids, return_counts=True)
    segments = []
    for sid, area in zip(present.tolist(), areas.tolist(), strict=True):
        if sid == 0:
            continue
        ys, xs = np.nonzero(ids == sid)
        segments.append(
            {
                "id": sid,
                "category_id": sid // 256,
                "iscrowd": int(sid in crowd),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
                "area": area,
            }
        )
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), ids, segments


def make_synthetic_panoptic(
    root: str | os.PathLike[str], num_images: int, image_size: int = 128, seed: int = 0, split: str = "train"
) -> PanopticSplit:
    """Write (or reuse) a synthetic COCO-panoptic split under ``root`` and return its paths.

    Deterministic: the same arguments give byte-identical files, and different splits of one seed
    differ. A second call with the same arguments finds the finished files and writes nothing. Every
    file is written atomically; the JSON last, so an interrupted run is redone.

    Args:
        root: dataset folder (created).
        num_images: images in the split.
        image_size: side of the square images, in pixels (>= 32).
        seed: generator seed.
        split: split name, used in folder and file names (``train``, ``val``...).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if image_size < 32:
        raise ValueError(
            f"image_size must be >= 32 pixels for the shapes to be recognisable, got {image_size}."
        )
    if not split or not split.replace("_", "").isalnum():
        raise ValueError(f"split must be a plain name such as 'train' or 'val', got {split!r}.")
    root = Path(root)
    categories_json = root / "categories.json"
    paths = PanopticSplit(
        image_dir=str(root / "images" / split),
        panoptic_dir=str(root / "panoptic" / split),
        panoptic_json=str(root / f"panoptic_{split}.json"),
        categories_json=str(categories_json),
    )
    info = {
        "description": "omtseg synthetic panoptic dataset",
        "version": _VERSION,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "split": split,
    }
    names = [f"{i:06d}.png" for i in range(num_images)]
    categories = synthetic_categories()
    if not categories_json.is_file() or load_json(categories_json) != categories:
        save_json(categories, categories_json, indent=1)
    if Path(paths.panoptic_json).is_file():
        done = load_json(paths.panoptic_json).get("info") == info and all(
            (Path(paths.image_dir) / n).is_file() and (Path(paths.panoptic_dir) / n).is_file() for n in names
        )
        if done:
            return paths

    images, annotations = [], []
    split_key = zlib.crc32(split.encode())
    for i, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_key, i]))
        image, ids, segments = _render(image_size, rng)
        save_image(image, Path(paths.image_dir) / name)
        save_image(id2rgb(ids), Path(paths.panoptic_dir) / name)
        images.append({"id": i, "file_name": name, "height": image_size, "width": image_size})
        annotations.append({"image_id": i, "file_name": name, "segments_info": segments})
    dataset = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    save_json(dataset, paths.panoptic_json)
    return paths
