"""Class vocabularies: one reader per file format, and clean prompt names for dataset category codes.

Readers, each named for the format it reads:

- :func:`read_categories_json`: COCO-style category records (``panoptic_coco_categories.json`` or the
  ``categories`` of a panoptic JSON) -> :class:`Vocabulary` with dataset ids, thing/stuff and colors.
- :func:`read_vocabulary_tsv`: the benchmark class lists in ``omtseg/assets/vocabularies/`` (tab-separated
  ``id [isthing R,G,B] names``) -> :class:`Vocabulary`.
- :func:`read_class_list`: a user's class list for ``omtseg predict --vocabulary_file`` (one class per line,
  ``stuff:`` prefix for stuff) -> thing and stuff entries; :func:`parse_class_list` reads the same entries
  given as a list (``omtseg segment --classes``, ``Segmenter(classes=...)``), :func:`class_list_vocabulary`
  turns them into a :class:`Vocabulary`.

Plain names (``["cat", "tv, monitor"]``) become a vocabulary through :meth:`Vocabulary.from_names`.

Dataset category names are annotation codes (``wall-other-merged``, ``playingfield``); the model reads
class names as text, so they are cleaned into plain words first. The rule (:func:`clean_class_name`)
strips the COCO suffixes ``-merged``, ``-other`` and ``-stuff`` and turns hyphens into spaces; the
table :data:`COCO_PANOPTIC_NAMES` overrides it for the COCO panoptic categories where the rule reads
badly (``floor-wood`` is a wooden floor, not "floor wood") and adds natural synonyms.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
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
        categories: records with ``id``, ``name`` and ``isthing`` (0/1); ``color`` ([R, G, B]) optional;
            ``split`` (an evaluation group such as ``novel``) optional, on all records or none.
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
    splits = [cat.get("split") for cat in categories]
    if any(g is not None for g in splits) and any(g is None for g in splits):
        raise ValueError(f"{source}: some categories have a 'split' group and some do not; give all or none.")
    return Vocabulary(
        names=tuple(names),
        synonyms=tuple(synonyms),
        is_thing=tuple(is_thing),
        category_ids=tuple(ids),
        colors=tuple(c if c is not None else fallback[i] for i, c in enumerate(colors)),
        groups=None if splits[0] is None else tuple(str(g) for g in splits),
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


def read_categories_json(path: str | os.PathLike[str]) -> Vocabulary:
    """The :class:`Vocabulary` of a categories JSON (see :func:`load_categories`)."""
    return vocabulary_from_categories(load_categories(path), source=str(path))


def read_vocabulary_tsv(path: str | os.PathLike[str]) -> Vocabulary:
    """Parse a vocabulary asset (format in ``omtseg/assets/vocabularies/NOTICE.md``).

    Each class line has 2 columns (``id``, ``names``) or 4 (``id``, ``isthing``, ``R,G,B``, ``names``).
    Two-column files are semantic-only benchmarks: every class is marked stuff, so panoptic post-processing
    merges each class into one segment, which is what a semantic label map means. ``category_ids`` holds
    the dataset's class id of each label (what the prepare commands map from).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line (named with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Vocabulary file not found: {path}.")
    ids: list[int] = []
    synonyms: list[tuple[str, ...]] = []
    is_thing: list[bool] = []
    colors: list[tuple[int, int, int] | None] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            if len(fields) == 2:
                ids.append(int(fields[0]))
                is_thing.append(False)
                colors.append(None)
            elif len(fields) == 4:
                ids.append(int(fields[0]))
                if fields[1] not in ("0", "1"):
                    raise ValueError(f"isthing must be 0 or 1, got {fields[1]!r}")
                is_thing.append(fields[1] == "1")
                r, g, b = (int(c) for c in fields[2].split(","))
                colors.append((r, g, b))
            else:
                raise ValueError(f"expected 2 or 4 tab-separated columns, got {len(fields)}")
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}. Fix the line: {line!r}") from e
        # dict.fromkeys drops repeated synonyms (the sources repeat a few) and keeps their order.
        names = tuple(dict.fromkeys(n.strip() for n in fields[-1].split(",") if n.strip()))
        if not names:
            raise ValueError(f"{path}:{number}: the class has no name. Fix the line: {line!r}")
        synonyms.append(names)
    if not synonyms:
        raise ValueError(f"Vocabulary file {path} lists no class.")
    fallback = Vocabulary.from_names([s[0] for s in synonyms]).colors
    return Vocabulary(
        names=tuple(s[0] for s in synonyms),
        synonyms=tuple(synonyms),
        is_thing=tuple(is_thing),
        category_ids=tuple(ids),
        colors=tuple(c if c is not None else fallback[k] for k, c in enumerate(colors)),
    )


def read_class_list(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Class names from a text file: one class per line, ``"tv, monitor"`` = one class with two names.

    A line starting with ``stuff:`` names a stuff class (amorphous regions: sky, grass); other lines name
    thing classes. Blank lines and lines starting with ``#`` are skipped (see :func:`parse_class_list`).

    Returns:
        (thing names, stuff names), each entry a comma-separated synonym list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file names no class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Vocabulary file not found: {path}. Write one class name per line.")
    return parse_class_list(path.read_text(encoding="utf-8").splitlines(), source=f"Vocabulary file {path}")


def parse_class_list(
    entries: Sequence[str], *, source: str = "The class list"
) -> tuple[list[str], list[str]]:
    """Class entries as a user writes them, one per class: the lines of a vocabulary file, the arguments of
    ``omtseg segment --classes``, the ``classes=`` of :class:`omtseg.Segmenter`.

    ``"tv, monitor"`` is one class with two names; ``"stuff: sky"`` a stuff class; blank entries and entries
    starting with ``#`` are skipped.

    Args:
        entries: one class per entry.
        source: what the entries come from, for the error message.

    Returns:
        (thing names, stuff names), each entry a comma-separated synonym list, in the given order.

    Raises:
        ValueError: the entries name no class.
    """
    things, stuff = [], []
    for entry in entries:
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.lower().startswith("stuff:"):
            stuff.append(entry[len("stuff:") :].strip())
        else:
            things.append(entry)
    if not any(n.strip(" ,") for n in things + stuff):
        raise ValueError(
            f"{source} names no class; give one class per entry (\"tv, monitor\" for synonyms, "
            "\"stuff: sky\" for stuff)."
        )
    return merge_duplicate_classes(things, stuff, source=source)


def merge_duplicate_classes(
    things: Sequence[str], stuff: Sequence[str], *, source: str = "The class list"
) -> tuple[list[str], list[str]]:
    """Entries that share a name (case and spacing aside) become one class, with a warning.

    Two classes with one name would split that name's pixels and scores between them. The merged class
    keeps the place and kind (thing or stuff) of its first entry and the names of all, in order.

    Args:
        things: thing entries, each a comma-separated synonym list.
        stuff: stuff entries, likewise.
        source: what the entries come from, for the warning.

    Returns:
        (thing entries, stuff entries) without duplicates.
    """
    groups: list[tuple[bool, list[str]]] = []  # (is thing, names) per class, in order
    owner: dict[str, int] = {}  # normalised name -> index into groups
    repeated: dict[int, list[str]] = {}  # class -> the names given again
    for thing, entry in [(True, e) for e in things] + [(False, e) for e in stuff]:
        names = [n.strip() for n in entry.split(",") if n.strip()]
        found = sorted({owner[k] for k in map(_key, names) if k in owner})
        if found:
            repeated.setdefault(found[0], []).extend(n for n in names if _key(n) in owner)
        else:
            found = [len(groups)]
            groups.append((thing, []))
        target = groups[found[0]][1]
        for other in found[1:]:  # an entry that joins two earlier classes merges them
            target += groups[other][1]
            groups[other][1].clear()
        for name in names:
            if _key(name) not in {_key(n) for n in target}:
                target.append(name)
        for name in target:
            owner[_key(name)] = found[0]
    for index, names in sorted(repeated.items()):
        warnings.warn(
            f"{source}: {', '.join(map(repr, names))} named again; merged into one class "
            f"{', '.join(groups[index][1])!r} (two classes with one name would split its predictions).",
            UserWarning,
            stacklevel=2,
        )
    kept = [(thing, ", ".join(names)) for thing, names in groups if names]
    return [e for thing, e in kept if thing], [e for thing, e in kept if not thing]


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def class_list_vocabulary(things: Sequence[str], stuff: Sequence[str]) -> Vocabulary:
    """The vocabulary of a user's class list: the things, then the stuff, each in the order given (as
    ``omtseg predict`` prompts them), category ids ``1..K`` in that order."""
    return Vocabulary.from_names([*things, *stuff], is_thing=[True] * len(things) + [False] * len(stuff))


def class_entries(vocabulary: Vocabulary) -> list[str]:
    """A vocabulary as the class entries a user writes (the inverse of :func:`parse_class_list`):
    ``"tv, monitor"`` for synonyms, ``"stuff: sky"`` for stuff classes, in the vocabulary's order."""
    return [
        ("" if thing else "stuff: ") + ", ".join(names)
        for names, thing in zip(vocabulary.synonyms, vocabulary.is_thing, strict=True)
    ]


def category_index(vocabulary: Vocabulary) -> dict[int, int]:
    """Dataset category id -> contiguous class index into ``vocabulary``."""
    return {cid: k for k, cid in enumerate(vocabulary.category_ids)}
