"""Class vocabularies from dataset category lists, with clean prompt names.

Dataset category names are annotation codes (``wall-other-merged``, ``playingfield``); the model reads
class names as text, so they are cleaned into plain words first. The rule (:func:`clean_class_name`)
strips the COCO suffixes ``-merged``, ``-other`` and ``-stuff`` and turns hyphens into spaces; the
table :data:`COCO_PANOPTIC_NAMES` overrides it for the COCO panoptic categories where the rule reads
badly (``floor-wood`` is a wooden floor, not "floor wood") and adds natural synonyms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from omtseg.io import load_json
from omtseg.types import Vocabulary

_SUFFIXES = ("-merged", "-other", "-stuff")

COCO_PANOPTIC_NAMES: dict[str, tuple[str, ...]] = {
    # Things whose COCO name is an abbreviation, a misspelling or has a common synonym.
    "person": ("person", "people", "human"),
    "motorcycle": ("motorcycle", "motorbike"),
    "airplane": ("airplane", "aeroplane", "plane"),
    "sports ball": ("ball", "sports ball"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant"),
    "dining table": ("dining table", "kitchen table"),
    "tv": ("television", "tv", "monitor"),
    "laptop": ("laptop", "notebook computer"),
    "mouse": ("computer mouse", "mouse"),
    "remote": ("remote control", "remote"),
    "cell phone": ("cell phone", "mobile phone", "smartphone"),
    "hair drier": ("hair dryer", "hair drier"),
    "refrigerator": ("refrigerator", "fridge"),
    "donut": ("donut", "doughnut"),
    "bicycle": ("bicycle", "bike"),
    # Stuff whose code the rule cannot read: compounds written backwards or without a space.
    "playingfield": ("playing field", "sports field"),
    "floor-wood": ("wooden floor", "wood floor", "parquet"),
    "wall-brick": ("brick wall",),
    "wall-stone": ("stone wall",),
    "wall-tile": ("tiled wall", "tile wall"),
    "wall-wood": ("wooden wall", "wood wall", "wood paneling"),
    "window-blind": ("window blind", "blinds"),
    "water-other": ("water",),
    "railroad": ("railroad", "railway", "train track"),
    "light": ("light", "lamp"),
    "sea": ("sea", "ocean"),
    "stairs": ("stairs", "staircase", "steps"),
    # "-merged" classes are unions of COCO-stuff classes: the synonyms name the merged parts.
    "tree-merged": ("tree", "trees", "bush", "foliage"),
    "fence-merged": ("fence", "railing"),
    "ceiling-merged": ("ceiling",),
    "sky-other-merged": ("sky", "clouds"),
    "cabinet-merged": ("cabinet", "cupboard"),
    "table-merged": ("table", "desk"),
    "floor-other-merged": ("floor", "tiled floor", "stone floor"),
    "pavement-merged": ("pavement", "sidewalk"),
    "mountain-merged": ("mountain", "hill"),
    "grass-merged": ("grass", "lawn"),
    "dirt-merged": ("dirt", "soil", "mud"),
    "paper-merged": ("paper",),
    "food-other-merged": ("food", "salad", "vegetable"),
    "building-other-merged": ("building", "skyscraper"),
    "rock-merged": ("rock", "stone"),
    "wall-other-merged": ("wall", "concrete wall", "panel wall"),
    "rug-merged": ("rug", "carpet", "mat"),
}
"""Raw COCO panoptic category name -> prompt names (first = display name), where the rule is not enough."""


def clean_class_name(raw: str) -> str:
    """A dataset category code as plain words: ``"wall-other-merged"`` -> ``"wall"``.

    Strips the suffixes ``-merged``, ``-other`` and ``-stuff`` (repeatedly, in any order), turns
    hyphens and underscores into spaces and collapses whitespace. The table
    :data:`COCO_PANOPTIC_NAMES` takes precedence in :func:`class_synonyms`.
    """
    name = raw.strip().lower()
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                stripped = True
    name = " ".join(name.replace("-", " ").replace("_", " ").split())
    if not name:
        raise ValueError(f"Category name {raw!r} is empty after cleaning; give the category a real name.")
    return name


def class_synonyms(raw: str, table: Mapping[str, Sequence[str]] = COCO_PANOPTIC_NAMES) -> tuple[str, ...]:
    """Prompt names of a category: the table's entry if it has one, else the cleaned name alone."""
    if raw in table:
        return tuple(table[raw])
    return (clean_class_name(raw),)


def vocabulary_from_categories(
    categories: Sequence[Mapping[str, Any]],
    *,
    table: Mapping[str, Sequence[str]] = COCO_PANOPTIC_NAMES,
    source: str = "categories",
) -> Vocabulary:
    """A :class:`Vocabulary` from COCO-style category records, in their given order.

    Args:
        categories: records with ``id``, ``name`` and ``isthing`` (0/1); ``color`` ([R, G, B]) optional.
        table: raw name -> prompt names overrides (default: the COCO panoptic table).
        source: where the records came from, for error messages.

    Raises:
        ValueError: a record lacks a key or has a color that is not an RGB triple, or the list is empty.
    """
    if len(categories) == 0:
        raise ValueError(f"{source}: the category list is empty; a dataset needs at least one category.")
    names, synonyms, is_thing, ids = [], [], [], []
    colors: list[tuple[int, int, int] | None] = []
    for k, cat in enumerate(categories):
        missing = [key for key in ("id", "name", "isthing") if key not in cat]
        if missing:
            raise ValueError(
                f"{source}: category #{k} ({dict(cat)!r}) lacks {missing}; each category needs "
                "'id', 'name' and 'isthing' as in panoptic_coco_categories.json."
            )
        syn = class_synonyms(str(cat["name"]), table)
        names.append(syn[0])
        synonyms.append(syn)
        is_thing.append(bool(cat["isthing"]))
        ids.append(int(cat["id"]))
        color = cat.get("color")
        if color is not None and len(color) != 3:
            raise ValueError(f"{source}: category #{k} has color {color!r}; give one [R, G, B] triple.")
        colors.append((int(color[0]), int(color[1]), int(color[2])) if color is not None else None)
    fallback = Vocabulary.from_names([f"class {i}" for i in range(len(names))]).colors
    return Vocabulary(
        names=tuple(names),
        synonyms=tuple(synonyms),
        is_thing=tuple(is_thing),
        category_ids=tuple(ids),
        colors=tuple(c if c is not None else fallback[i] for i, c in enumerate(colors)),
    )


def load_categories(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Category records from a JSON file: a bare list (``panoptic_coco_categories.json``) or a
    dataset JSON with a ``categories`` key (``panoptic_val2017.json``)."""
    data = load_json(path, what="Categories JSON")
    if isinstance(data, dict):
        if "categories" not in data:
            raise ValueError(
                f"{path} has no 'categories' key; give a panoptic JSON or a list of categories "
                "(panoptic_coco_categories.json)."
            )
        data = data["categories"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of category records, got {type(data).__name__}.")
    return data


def load_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """The :class:`Vocabulary` of a categories JSON (see :func:`load_categories`)."""
    return vocabulary_from_categories(load_categories(path), source=str(path))


def category_index(vocabulary: Vocabulary) -> dict[int, int]:
    """Dataset category id -> contiguous class index into ``vocabulary``."""
    return {cid: k for k, cid in enumerate(vocabulary.category_ids)}
