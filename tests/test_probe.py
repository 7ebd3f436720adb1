"""``omtseg probe``: the grounding probe of a pretrained trunk (omtseg/commands/probe.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from omtseg.cli import main
from omtseg.commands.probe import contrast_probe, grounding_probe, world_word_kinds
from omtseg.data.corpus import ImageCaptionDataset
from omtseg.data.world import make_world_split
from omtseg.modeling.backbone.beit3 import BEiT3, load_beit3_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights" / "beit3_tiny_world.pth"
PRETRAIN_CONFIG = REPO / "configs" / "pretrain" / "world_tiny.yaml"


def _tiny_trunk() -> BEiT3:
    return BEiT3(img_size=64, embed_dim=64, depth=4, num_heads=4)  # configs/pretrain/world_tiny.yaml's


@pytest.fixture(scope="module")
def fresh_world(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[torch.Tensor, str]]:
    """Captioned world images the shipped trunk never saw (another seed than its corpus)."""
    root = tmp_path_factory.mktemp("probe_world")
    make_world_split(root, "pretrain", 40, image_size=64, seed=1)
    data = ImageCaptionDataset(
        image_dir=root / "images" / "pretrain", captions_json=root / "captions_pretrain.json"
    )
    return [(data[k][0], data[k][1]) for k in range(len(data))]


def test_the_shipped_trunk_grounds_colours_and_stuff_by_contrast_and_a_random_one_does_not(
    fresh_world: list[tuple[torch.Tensor, str]],
) -> None:
    torch.set_num_threads(1)
    kinds = world_word_kinds()
    pretrained = _tiny_trunk()
    load_beit3_checkpoint(pretrained, SHIPPED)
    grounded = contrast_probe(pretrained, fresh_world, kinds)
    assert grounded.as_dict()["colour"]["n"] > 300 and grounded.as_dict()["stuff"]["n"] > 300  # pairs
    assert grounded.as_dict()["colour"]["chance"] == 0.5
    # Measured: shipped colour 0.90, stuff 0.86 (shapes 0.48: not seen); random trunks (seeds 0-2) 0.37-0.56
    # and 0.50-0.57; the masked-modeling trunk shipped before the contrast 0.37 and 0.50.
    for seed in (0, 1):
        torch.manual_seed(seed)
        chance = contrast_probe(_tiny_trunk(), fresh_world, kinds)
        for kind in ("colour", "stuff"):
            assert grounded.accuracy(kind) >= chance.accuracy(kind) + 0.2, (kind, seed)
            assert chance.accuracy(kind) < 0.65, (kind, seed)  # chance is 0.5


def test_the_joint_reading_of_the_shipped_trunk_is_reported_per_kind(
    fresh_world: list[tuple[torch.Tensor, str]],
) -> None:
    """The contrast trunk does not ground in the joint reading (measured: colour 0.19, chance 0.20; the
    masked-modeling trunk 0.46): the counts are what this can check."""
    torch.set_num_threads(1)
    pretrained = _tiny_trunk()
    load_beit3_checkpoint(pretrained, SHIPPED)
    joint = grounding_probe(pretrained, fresh_world, world_word_kinds()).as_dict()
    assert joint["colour"]["n"] > 100 and joint["stuff"]["n"] > 50  # every world word of every caption
    assert joint["colour"]["chance"] == 0.2 and joint["stuff"]["chance"] == 0.125
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in joint.values())


def test_probe_words_must_be_single_tokens(fresh_world: list[tuple[torch.Tensor, str]]) -> None:
    with pytest.raises(ValueError, match="'brick wall' is 2 tokens"):
        grounding_probe(_tiny_trunk(), fresh_world[:1], {"stuff": ["brick wall", "sky"]})
    with pytest.raises(ValueError, match="'brick wall' is 2 tokens"):
        contrast_probe(_tiny_trunk(), fresh_world[:1], {"stuff": ["brick wall", "sky"]})


def test_probe_command_writes_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the report goes to outputs/probe/<backbone stem>.json, not into weights/
    out = tmp_path / "outputs" / "probe" / "beit3_tiny_world.json"
    args = ["probe", "--backbone", str(SHIPPED), "--config", str(PRETRAIN_CONFIG), "--images", "6",
            "--data.init_args.root", str(tmp_path / "world"),
            "--data.init_args.world.num_images", "30", "--data.init_args.val_images", "8"]  # fmt: skip
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 6 and report["captions"] == 12  # two captions per world image
    assert set(report["kinds"]) == set(report["contrast"]) == {"colour", "shape", "stuff"}
    assert 0 < report["contrast"]["stuff"]["n"] and report["contrast"]["stuff"]["chance"] == 0.5
    assert 0 < report["kinds"]["colour"]["n"] and 0.0 <= report["kinds"]["colour"]["accuracy"] <= 1.0
    assert "grounded" in capsys.readouterr().out


def test_probe_command_names_a_missing_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        main(["probe", "--backbone", str(tmp_path / "nope.pth")])
    assert exit_info.value.code == 2
    assert "BEiT-3 weights not found" in capsys.readouterr().err
