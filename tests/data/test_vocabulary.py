from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from omtseg.data.datamodule import PanopticDataModule
from omtseg.data.vocabulary import (
    COCO_PANOPTIC_NAMES,
    category_index,
    class_list_vocabulary,
    class_synonyms,
    clean_class_name,
    load_categories,
    parse_class_list,
    read_categories_json,
    vocabulary_from_categories,
)

COCO_CATEGORIES = (
    Path(__file__).parents[1] / "fixtures" / "coco_panoptic_sample" / "panoptic_coco_categories.json"
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("wall-other-merged", "wall"),
        ("sky-other-merged", "sky"),
        ("door-stuff", "door"),
        ("mirror-stuff", "mirror"),
        ("tree-merged", "tree"),
        ("traffic light", "traffic light"),
        ("Fire_Hydrant", "fire hydrant"),
        ("window-blind", "window blind"),
        ("other", "other"),  # a bare suffix is a name, not something to strip
    ],
)
def test_clean_class_name_rule(raw: str, clean: str) -> None:
    assert clean_class_name(raw) == clean


def test_clean_class_name_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        clean_class_name(" - ")


def test_table_overrides_rule_where_rule_reads_badly() -> None:
    assert class_synonyms("playingfield")[0] == "playing field"
    assert class_synonyms("floor-wood")[0] == "wooden floor"
    assert class_synonyms("wall-brick")[0] == "brick wall"
    assert class_synonyms("tv") == ("television", "tv", "monitor")
    assert class_synonyms("zebra") == ("zebra",)
    assert class_synonyms("zebra", table={"zebra": ("zebra", "equid")}) == ("zebra", "equid")


def test_coco_vocabulary_is_clean_and_unambiguous() -> None:
    vocab = read_categories_json(COCO_CATEGORIES)
    assert len(vocab) == 133
    assert sum(vocab.is_thing) == 80 and vocab.is_thing.count(False) == 53
    raw_names = [c["name"] for c in json.loads(COCO_CATEGORIES.read_text())]
    assert set(COCO_PANOPTIC_NAMES) <= set(raw_names), "the table names a category COCO does not have"
    assert len(set(vocab.names)) == 133
    prompts = [p for syn in vocab.synonyms for p in syn]
    assert len(prompts) == len(set(prompts)), "one prompt name would point at two classes"
    for name in prompts:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", name), name
        assert not re.search(r"\b(merged|stuff)\b", name), name
    assert vocab.names[vocab.category_ids.index(199)] == "wall"
    assert vocab.names[vocab.category_ids.index(145)] == "playing field"
    assert vocab.colors[0] == (220, 20, 60)


def test_vocabulary_from_categories_fields_and_defaults() -> None:
    cats = [
        {"id": 7, "name": "rock-merged", "isthing": 0, "color": [1, 2, 3]},
        {"id": 3, "name": "kite", "isthing": 1},
    ]
    vocab = vocabulary_from_categories(cats)
    assert vocab.names == ("rock", "kite")
    assert vocab.synonyms[0] == ("rock", "stone")
    assert vocab.is_thing == (False, True)
    assert vocab.category_ids == (7, 3)
    assert vocab.colors[0] == (1, 2, 3) and len(vocab.colors[1]) == 3
    assert category_index(vocab) == {7: 0, 3: 1}


def test_vocabulary_from_categories_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        vocabulary_from_categories([])
    with pytest.raises(ValueError, match="isthing"):
        vocabulary_from_categories([{"id": 1, "name": "cat"}], source="my.json")


def test_load_categories_accepts_list_or_dataset_json(tmp_path: Path) -> None:
    cats = [{"id": 1, "name": "cat", "isthing": 1}]
    (tmp_path / "list.json").write_text(json.dumps(cats))
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [], "categories": cats}))
    (tmp_path / "nocats.json").write_text(json.dumps({"images": []}))
    (tmp_path / "scalar.json").write_text("3")
    assert load_categories(tmp_path / "list.json") == cats
    assert load_categories(tmp_path / "dataset.json") == cats
    with pytest.raises(ValueError, match="no 'categories'"):
        load_categories(tmp_path / "nocats.json")
    with pytest.raises(ValueError, match="expected a list"):
        load_categories(tmp_path / "scalar.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_categories(tmp_path / "missing.json")


def test_duplicate_class_names_are_merged_with_a_warning() -> None:
    entries = ["cat", "Cat", "tv, monitor", "monitor,  screen", "stuff: sky", "stuff: sky", "dog",
               "stuff: dog"]  # fmt: skip
    merged = "'monitor' named again; merged into one class 'tv, monitor, screen'"
    with pytest.warns(UserWarning, match=merged):
        things, stuff = parse_class_list(entries)
    assert (things, stuff) == (["cat", "tv, monitor, screen", "dog"], ["sky"])
    vocabulary = class_list_vocabulary(things, stuff)
    assert len(vocabulary) == 4 and len(set(vocabulary.names)) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates, no warning
        assert parse_class_list(["cat", "dog"]) == (["cat", "dog"], [])


def test_predict_class_names_of_the_datamodule_are_merged_too() -> None:
    dm = PanopticDataModule(predict_class_names=["ball", "Ball", "box"], predict_stuff_names=["sky"])
    with pytest.warns(UserWarning, match="named again"):
        assert dm.predict_vocabulary.names == ("ball", "box", "sky")
