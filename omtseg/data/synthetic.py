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


def _texture(
    kind: str, color: tuple[int, int, int], rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """(S, S, 3) float image of one stuff texture over the whole canvas."""
    s = yy.shape[0]
    base = np.asarray(color, dtype=np.float32) + rng.uniform(-10, 10, 3)
    img = np.broadcast_to(base, (s, s, 3)).copy()
    if kind == "gradient":
        img += (40.0 * yy / s)[..., None] + rng.normal(0, 2, (s, s, 1))
    elif kind == "streaks":
        column = np.repeat(rng.normal(0, 14, (1, s)), s, axis=0)
        img += (column + rng.normal(0, 8, (s, s)))[..., None] * np.array([0.4, 1.0, 0.4])
    elif kind == "speckle":
        img += rng.normal(0, 11, (s, s, 1))
    elif kind == "waves":
        phase = rng.uniform(0, 2 * np.pi)
        img += (22.0 * np.sin(2 * np.pi * yy / 7.0 + 0.6 * np.sin(xx / 9.0) + phase))[..., None]
    elif kind == "bricks":
        row = (yy // 8).astype(np.int64)
        mortar = (yy % 8 == 0) | (((xx + 8 * (row % 2)) % 16) == 0)
        img += rng.normal(0, 6, (s, s, 1))
        img[mortar] = (205, 200, 190)
    elif kind == "asphalt":
        img += rng.normal(0, 9, (s, s, 1))
    return img


def _shape(
    kind: str, cy: float, cx: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """(S, S) bool silhouette of one thing of radius ``r`` centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    if kind == "square":
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "triangle":  # upright, apex at the top, like a cone
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= 0.75 * r * t)
    theta = np.arctan2(dy, dx) - angle  # star: radius follows a triangle wave with 5 peaks
    frac = (5 * theta / (2 * np.pi)) % 1.0
    return np.hypot(dy, dx) <= r * (0.42 + 0.58 * (1 - 2 * np.abs(frac - 0.5)))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _paint_thing(
    img: np.ndarray,
    mask: np.ndarray,
    cls: tuple,
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    r: float,
) -> None:
    """Paint one instance in its own shade of the class color, with a dark outline."""
    shade = np.asarray(cls[3], dtype=np.float32) * rng.uniform(0.8, 1.1) + rng.uniform(-15, 15, 3)
    if cls[4] == "circle":  # a lit ball: brighter towards the upper left
        light = 1.25 - 0.45 * np.clip(np.hypot(yy - cy + 0.3 * r, xx - cx + 0.3 * r) / (1.3 * r), 0, 1)
        img[mask] = shade * light[mask][:, None]
    else:
        img[mask] = shade
    img[_outline(mask)] *= 0.45


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
        img[region] = _texture(_BY_ID[cid][4], _BY_ID[cid][3], rng, yy, xx)[region]
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
            m = _shape(cls[4], y, x, r, rng.uniform(0, np.pi), yy, xx)
            _paint_thing(img, m, cls, rng, yy, xx, y, x, r)
            ids[m] = seg_id
        crowd.add(seg_id)

    placed: list[tuple[int, int]] = []  # (segment id, full area) of instances so far
    for k in range(int(rng.integers(1, 6))):
        for _ in range(20):  # resample until no earlier instance is hidden too much
            cls = things[int(rng.integers(len(things)))]
            r = rng.uniform(0.07, 0.22) * size
            cy, cx = rng.uniform(0.5 * r, size - 0.5 * r, 2)
            m = _shape(cls[4], cy, cx, r, rng.uniform(0, np.pi), yy, xx)
            area = int(m.sum())
            if area < 40:
                continue
            if all(int(((ids == sid) & ~m).sum()) >= max(40, 0.4 * a) for sid, a in placed):
                break
        else:
            continue
        seg_id = cls[0] * 256 + k + 1
        _paint_thing(img, m, cls, rng, yy, xx, cy, cx, r)
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
