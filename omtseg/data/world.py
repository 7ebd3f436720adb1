"""The open-vocabulary world: the paper's whole setting in miniature, for CPUs.

OMTSeg's claim is that a vision-language pretrained multiway backbone, reading class names together with the
image, segments classes absent from segmentation training. This module builds the smallest honest replica of
that setting, deterministic from a seed:

* **Words.** Things are named ``"<colour> <shape>"`` (``"red ball"``, 5 colours x 4 shapes); stuff is a
  textured region with a name of one or two words (``"grass"``, ``"brick wall"``, 8 kinds).
* **Novel concepts** (:data:`NOVEL_WORDS`: the colour ``orange``, the shape ``cross``, the stuff ``snow`` and
  ``lava``) occur in captions but in no segmentation label, and never in a segmentation training image, not
  even unlabelled: COCO images do hold unlabelled ADE20K concepts, but a void region that is always the novel
  concept would leak its appearance into training, so the replica keeps training images free of them (the
  stricter setting).
* **Unseen compositions** (:data:`UNSEEN_COMPOSITIONS`): seen colour + seen shape pairs that no training
  image shows.
* **Seen classes**: the other 9 colour-shape pairs and 6 stuff kinds, the analog of COCO's 133.

Splits written by :func:`make_world` under ``root``:

* ``pretrain``: the caption corpus, the analog of BEiT-3's web image-text pairs: images of **every** class
  with two captions each (attributes, sizes, places, relations), covering every word of the world, in COCO
  captions format (``captions_pretrain.json``).
* ``train``, ``val``, ``test``: segmentation in COCO-panoptic format, seen classes only (their category list
  is the 15 seen classes).
* ``unseen``, ``novel``: zero-shot evaluation sets in COCO-panoptic format whose category list is the whole
  world (28 classes, as ADE20K's list holds COCO's and more); every image shows at least one unseen-
  composition (resp. novel) segment among seen ones. Each category carries ``"split"``: ``seen``, ``unseen``
  or ``novel``, read into ``Vocabulary.groups``, so PQ is also reported per group
  (``test/pq_novel``...).
* ``unseen_val``: other images drawn as ``unseen``'s, for choosing inference settings that concern untrained
  classes (the calibration of :func:`omtseg.evaluation.calibration.sweep_seen_penalty`) without looking at
  the test images; it never holds a novel concept, so a setting chosen on it says nothing in advance about
  novel concepts.

The panoptic layout is :mod:`omtseg.data.synthetic`'s (``images/<split>/``, ``panoptic/<split>/``,
``panoptic_<split>.json``), read unchanged by :class:`~omtseg.data.coco_panoptic.CocoPanopticDataset`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omtseg.data.coco_panoptic import PanopticSplit
from omtseg.data.render import paint_thing, shape_mask, texture
from omtseg.io import id2rgb, load_json, save_image, save_json

_VERSION = 2  # bump when rendering or captions change, so stale worlds are regenerated

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 55),
    "blue": (40, 80, 225),
}
SHAPES: dict[str, str] = {  # name -> silhouette (omtseg.data.render.shape_mask)
    "ball": "circle",
    "box": "square",
    "ring": "ring",
    "cross": "cross",
}
STUFF: dict[str, tuple[tuple[int, int, int], str, str]] = {  # name -> (colour, texture, place)
    "sky": ((135, 185, 240), "gradient", "top"),
    "brick wall": ((150, 70, 55), "bricks", "top"),
    "grass": ((55, 145, 55), "streaks", "ground"),
    "sand": ((215, 190, 145), "speckle", "ground"),
    "water": ((25, 100, 125), "waves", "ground"),
    "road": ((70, 70, 76), "asphalt", "ground"),
    "snow": ((235, 240, 248), "flakes", "ground"),
    "lava": ((95, 25, 15), "cracks", "ground"),
}
NOVEL_WORDS = ("orange", "cross", "snow", "lava")
"""Words that appear in captions but in no segmentation label (the analog of ADE20K-only concepts)."""
UNSEEN_COMPOSITIONS = ("red ring", "yellow box", "green ball")
"""Pairs of seen words that no segmentation training image shows."""
GROUPS = ("seen", "unseen", "novel")
SEG_SPLITS = ("train", "val", "test", "unseen", "novel", "unseen_val")
ZERO_SHOT_SPLITS = ("unseen", "novel", "unseen_val")  # category list: the whole world


@dataclass(frozen=True)
class WorldClass:
    """One class of the world.

    Attributes:
        id: category id (things 1.., stuff 101..).
        name: the class name, made of words.
        isthing: countable object (True) or stuff region.
        group: ``seen``, ``unseen`` (composition) or ``novel`` (has a novel word).
        color: base RGB of the rendering.
        look: silhouette (things) or texture (stuff).
        place: ``top``/``ground`` for stuff, ``""`` for things.
    """

    id: int
    name: str
    isthing: bool
    group: str
    color: tuple[int, int, int]
    look: str
    place: str = ""


def world_classes() -> list[WorldClass]:
    """All 28 classes: 20 colour-shape things (ids 1-20) then 8 stuff kinds (ids 101-108)."""
    out = []
    for i, (color, rgb) in enumerate(COLORS.items()):
        for j, (shape, silhouette) in enumerate(SHAPES.items()):
            name = f"{color} {shape}"
            group = (
                "novel"
                if color in NOVEL_WORDS or shape in NOVEL_WORDS
                else "unseen"
                if name in UNSEEN_COMPOSITIONS
                else "seen"
            )
            out.append(WorldClass(1 + i * len(SHAPES) + j, name, True, group, rgb, silhouette))
    for k, (name, (rgb, tex, place)) in enumerate(STUFF.items()):
        group = "novel" if any(w in NOVEL_WORDS for w in name.split()) else "seen"
        out.append(WorldClass(101 + k, name, False, group, rgb, tex, place))
    return out


def world_categories(groups: Sequence[str] = GROUPS) -> list[dict[str, Any]]:
    """COCO category records of the classes in ``groups``, each with its ``split`` group."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "isthing": int(c.isthing),
            "color": list(c.color),
            "supercategory": "thing" if c.isthing else "stuff",
            "split": c.group,
        }
        for c in world_classes()
        if c.group in groups
    ]


def world_words() -> list[str]:
    """Every word of every class name, sorted."""
    return sorted({w for c in world_classes() for w in c.name.split()})


# ------------------------------------------------------------------------------------------- rendering


@dataclass
class _Instance:
    cls: WorldClass
    cy: float
    cx: float
    r: float
    seg_id: int


def _pick(rng: np.random.Generator, pool: Sequence[WorldClass]) -> WorldClass:
    return pool[int(rng.integers(len(pool)))]


def _render(
    size: int,
    rng: np.random.Generator,
    things: Sequence[WorldClass],
    must: Sequence[WorldClass],
    tops: Sequence[WorldClass],
    grounds: Sequence[WorldClass],
) -> tuple[np.ndarray, np.ndarray, list[_Instance], list[WorldClass]]:
    """One image: (S, S, 3) uint8, its (S, S) segment-id map, its instances and its stuff classes.

    ``must``: classes of which at least one is drawn (things as an instance, stuff as a band).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), dtype=np.float32)
    ids = np.zeros((size, size), dtype=np.int64)
    must_stuff = [c for c in must if not c.isthing]
    must_things = [c for c in must if c.isthing]

    # Stuff: a top band over one or two ground bands with wavy borders.
    n_ground = int(rng.integers(1, 3))
    top = next((c for c in must_stuff if c.place == "top"), None) or _pick(rng, tops)
    ground = [c for c in must_stuff if c.place == "ground"][:n_ground]
    while len(ground) < n_ground:
        c = _pick(rng, grounds)
        if c not in ground:
            ground.append(c)
    order = rng.permutation(len(ground))  # a required ground band is not always the nearest
    stuff = [top, *(ground[i] for i in order)]
    borders = np.sort(rng.uniform(0.3, 0.75, len(stuff) - 1)) * size
    band = np.zeros((size, size), dtype=np.int64)
    for b, y0 in enumerate(borders):
        wave = y0 + 0.05 * size * np.sin(xx / size * rng.uniform(3, 9) + rng.uniform(0, 2 * np.pi))
        band[yy >= wave] = b + 1
    for b, c in enumerate(stuff):
        region = band == b
        img[region] = texture(c.look, c.color, rng, yy, xx)[region]
        ids[region] = c.id * 256

    placed: list[tuple[int, int]] = []  # (segment id, full area) of instances so far
    instances: list[_Instance] = []
    n_things = max(len(must_things), int(rng.integers(1, 4)))
    for k in range(n_things):
        cls = must_things[k] if k < len(must_things) else _pick(rng, things)
        for _ in range(30):  # resample until no earlier instance is hidden too much
            r = rng.uniform(0.17, 0.28) * size
            cy, cx = rng.uniform(0.6 * r, size - 0.6 * r, 2)
            m = shape_mask(cls.look, cy, cx, r, rng.uniform(0, np.pi), yy, xx)
            area = int(m.sum())
            if area >= 40 and all(int(((ids == sid) & ~m).sum()) >= max(40, 0.5 * a) for sid, a in placed):
                break
        else:
            continue
        seg_id = cls.id * 256 + k + 1
        paint_thing(img, m, cls.color, cls.look, rng, yy, xx, cy, cx, r, shade_range=(0.88, 1.05), tint=8)
        ids[m] = seg_id
        placed.append((seg_id, area))
        instances.append(_Instance(cls, cy, cx, r, seg_id))
    img += rng.normal(0, 3, img.shape)
    visible = set(np.unique(ids).tolist())
    instances = [i for i in instances if i.seg_id in visible]
    stuff = [c for c in stuff if c.id * 256 in visible]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), ids, instances, stuff


def _segments(ids: np.ndarray) -> list[dict[str, Any]]:
    present, areas = np.unique(ids, return_counts=True)
    out = []
    for sid, area in zip(present.tolist(), areas.tolist(), strict=True):
        if sid == 0:
            continue
        ys, xs = np.nonzero(ids == sid)
        x0, y0 = int(xs.min()), int(ys.min())
        out.append(
            {
                "id": sid,
                "category_id": sid // 256,
                "iscrowd": 0,
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "area": area,
            }
        )
    return out


# -------------------------------------------------------------------------------------------- captions

_GROUND_PREP = {"water": "in", "lava": "on", "snow": "on"}


def _thing_phrase(inst: _Instance, size: int, rng: np.random.Generator) -> str:
    adjective = "big " if inst.r > 0.24 * size else "small " if inst.r < 0.2 * size else ""
    words = f"{adjective if rng.random() < 0.7 else ''}{inst.cls.name}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def _where(inst: _Instance, size: int) -> str:
    horizontal = "left" if inst.cx < size / 3 else "right" if inst.cx > 2 * size / 3 else "middle"
    vertical = "top" if inst.cy < size / 3 else "bottom" if inst.cy > 2 * size / 3 else "middle"
    if horizontal == vertical == "middle":
        return "in the middle"
    if vertical == "middle":
        return f"on the {horizontal}"
    if horizontal == "middle":
        return f"at the {vertical}"
    return f"at the {vertical} {horizontal}"


def _relation(a: _Instance, b: _Instance) -> str:
    dy, dx = b.cy - a.cy, b.cx - a.cx
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def captions(
    instances: Sequence[_Instance], stuff: Sequence[WorldClass], size: int, rng: np.random.Generator
) -> list[str]:
    """Two captions of one image: one lists everything with the scene, one places and relates things."""
    tops = [c for c in stuff if c.place == "top"]
    grounds = [c for c in stuff if c.place == "ground"]
    top = tops[0] if tops else grounds.pop(0)
    things = [_thing_phrase(i, size, rng) for i in instances]
    listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    scene = []
    if grounds:
        g = grounds[-1].name
        scene.append(f"{_GROUND_PREP.get(g, 'on')} the {g}")
    scene.append("under the sky" if top.name == "sky" else f"in front of a {top.name}")
    first = (
        f"{listed} {' '.join(scene)}."
        if things
        else f"a view of the {grounds[-1].name if grounds else top.name}."
    )
    parts = []
    for k, inst in enumerate(instances):
        if k + 1 < len(instances) and rng.random() < 0.6:
            other = instances[k + 1]
            parts.append(f"the {inst.cls.name} is {_relation(inst, other)} the {other.cls.name}")
        else:
            parts.append(f"the {inst.cls.name} is {_where(inst, size)}")
    if len(grounds) == 2:
        parts.append(f"there is {grounds[0].name} above the {grounds[1].name}")
    elif grounds:
        parts.append(f"the {grounds[0].name} is below the {top.name}")
    second = ". ".join(parts) + "."
    return [first, second]


# ------------------------------------------------------------------------------------------------ files


def world_split_paths(root: str | os.PathLike[str], split: str) -> PanopticSplit:
    """Where a segmentation split of the world lies under ``root`` (```` gives relative paths)."""
    root = Path(root)
    return PanopticSplit(
        image_dir=str(root / "images" / split),
        panoptic_dir=str(root / "panoptic" / split),
        panoptic_json=str(root / f"panoptic_{split}.json"),
        categories_json=str(root / f"categories_{split}.json"),
    )


def _pools(split: str) -> tuple[list[WorldClass], list[WorldClass], list[WorldClass], list[WorldClass]]:
    """(thing pool, required pool, top stuff, ground stuff) a split draws from."""
    classes = world_classes()
    if split in ("train", "val", "test"):
        allowed = [c for c in classes if c.group == "seen"]
        required: list[WorldClass] = []
    elif split in ("unseen", "unseen_val"):
        allowed = [c for c in classes if c.group in ("seen", "unseen")]
        required = [c for c in classes if c.group == "unseen"]
    elif split == "novel":
        allowed = [c for c in classes if c.group in ("seen", "novel")]
        required = [c for c in classes if c.group == "novel"]
    else:  # pretrain: everything
        allowed = classes
        required = []
    things = [c for c in allowed if c.isthing]
    tops = [c for c in allowed if not c.isthing and c.place == "top"]
    grounds = [c for c in allowed if not c.isthing and c.place == "ground"]
    return things, required, tops, grounds


def _done(json_path: Path, info: Mapping[str, Any], image_dir: Path, names: Sequence[str]) -> bool:
    return (
        json_path.is_file()
        and load_json(json_path).get("info") == dict(info)
        and all((image_dir / n).is_file() for n in names)
    )


def make_world_split(
    root: str | os.PathLike[str], split: str, num_images: int, image_size: int = 64, seed: int = 0
) -> PanopticSplit | Path:
    """Write (or reuse) one split of the world; see the module docstring for what each split holds.

    Deterministic: the same arguments give identical files; a finished split is found and not rewritten.
    The JSON is written last (atomically), so an interrupted split is redone.

    Returns:
        The split's :class:`PanopticSplit`, or for ``pretrain`` the path of ``captions_pretrain.json``.
    """
    if split not in (*SEG_SPLITS, "pretrain"):
        raise ValueError(f"Unknown world split {split!r}; choose one of {(*SEG_SPLITS, 'pretrain')}.")
    if num_images < 1 or image_size < 48:
        raise ValueError(f"Need num_images >= 1 and image_size >= 48, got {num_images} and {image_size}.")
    root = Path(root)
    info = {
        "description": "omtseg open-vocabulary world",
        "version": _VERSION,
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
    }
    names = [f"{i:06d}.png" for i in range(num_images)]
    image_dir = root / "images" / split
    things, required, tops, grounds = _pools(split)
    key = zlib.crc32(split.encode())
    paths = world_split_paths(root, split)
    json_path = root / "captions_pretrain.json" if split == "pretrain" else Path(paths.panoptic_json)
    if split != "pretrain":
        groups = GROUPS if split in ZERO_SHOT_SPLITS else ("seen",)
        categories = world_categories(groups)
        categories_json = Path(str(paths.categories_json))
        if not categories_json.is_file() or load_json(categories_json) != categories:
            save_json(categories, categories_json, indent=1)
    if _done(json_path, info, image_dir, names):
        return json_path if split == "pretrain" else paths

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence([seed, key, i]))
        must = [required[i % len(required)]] if required else []
        if required and rng.random() < 0.5:
            must.append(_pick(rng, [c for c in required if c.isthing]))
        image, ids, instances, stuff = _render(image_size, rng, things, must, tops, grounds)
        save_image(image, image_dir / name)
        images.append({"id": i, "file_name": name, "height": image_size, "width": image_size})
        if split == "pretrain":
            for text in captions(instances, stuff, image_size, rng):
                annotations.append({"id": len(annotations), "image_id": i, "caption": text})
        else:
            save_image(id2rgb(ids), Path(paths.panoptic_dir) / name)
            annotations.append({"image_id": i, "file_name": name, "segments_info": _segments(ids)})
    dataset: dict[str, Any] = {"info": info, "images": images, "annotations": annotations}
    if split != "pretrain":
        dataset["categories"] = world_categories(GROUPS if split in ZERO_SHOT_SPLITS else ("seen",))
    save_json(dataset, json_path)
    return json_path if split == "pretrain" else paths


@dataclass
class WorldSizes:
    """Images per split of :func:`make_world` (defaults: the demo's)."""

    pretrain: int = 6000
    train: int = 800
    val: int = 60
    test: int = 100
    unseen: int = 100
    novel: int = 100
    unseen_val: int = 60


def make_world(
    root: str | os.PathLike[str], sizes: WorldSizes | None = None, image_size: int = 64, seed: int = 0
) -> dict[str, PanopticSplit | Path]:
    """Write (or reuse) every split of the world under ``root``; returns each split's paths."""
    sizes = sizes or WorldSizes()
    return {
        split: make_world_split(root, split, getattr(sizes, split), image_size=image_size, seed=seed)
        for split in ("pretrain", *SEG_SPLITS)
        if getattr(sizes, split) > 0
    }
