"""Every shipped YAML parses with ``--print_config``; the paper recipe and ablations are what they say."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from omtseg.cli import main
from omtseg.commands.pretrain import build_pretrain_cli
from omtseg.modeling.backbone.beit3 import BEiT3, beit3_tiny

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "demo.yaml"
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in ("pretrain", "caption"))
PRETRAIN_FILES = sorted((CONFIGS / "pretrain").glob("*.yaml"))


def _args(path: Path) -> list[str]:
    # Recipes parse alone; a component file is swapped into the demo recipe; an overlay goes on top of it.
    kind = path.parent.name
    if kind in ("model", "data", "trainer"):
        return ["--config", str(DEMO), f"--{kind}", str(path)]
    if kind == "ablation":
        return ["--config", str(DEMO), "--config", str(path)]
    return ["--config", str(path)]


def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_config_is_checked() -> None:
    names = {p.relative_to(CONFIGS).as_posix() for p in FILES}
    assert {"demo.yaml", "coco_panoptic_large.yaml", "model/omtseg_tiny.yaml", "model/omtseg_large.yaml"} <= (
        names
    )
    assert {f"ablation/{a}.yaml" for a in ("no_cross_modal", "no_adapter", "no_prompt_tuning")} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(CONFIGS).as_posix() for p in FILES])
def test_config_parses_with_print_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(_args(path), capsys)
    assert config["model"]["model"]["class_path"] == "omtseg.modeling.segmenter.OMTSeg"
    assert "${" not in yaml.safe_dump(config)  # every interpolation resolved
    # The schedule always spans the run it belongs to.
    assert config["model"]["scheduler"]["init_args"]["max_steps"] == config["trainer"]["max_steps"]


@pytest.mark.parametrize("path", PRETRAIN_FILES, ids=[p.name for p in PRETRAIN_FILES])
def test_pretrain_config_builds_the_tiny_preset(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with mock.patch.object(sys, "argv", ["omtseg"]), pytest.raises(SystemExit) as exit_info:
        build_pretrain_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert "${" not in yaml.safe_dump(config)
    model = config["model"]["init_args"]
    assert model["scheduler"]["init_args"]["max_steps"] == config["trainer"]["max_steps"]
    # What `omtseg pretrain` trains is what the segmentation configs' `backbone: tiny` loads.
    backbone = model["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "omtseg.modeling.backbone.beit3.BEiT3"
    built = BEiT3(**backbone["init_args"])
    preset = beit3_tiny(img_size=64)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in preset.state_dict().items()
    }


def test_paper_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    config = _print_config(["--config", str(CONFIGS / "coco_panoptic_large.yaml")], capsys)
    model, data, trainer = config["model"], config["data"]["init_args"], config["trainer"]
    assert model["model"]["init_args"]["backbone"] == "large"
    assert model["optimizer"]["class_path"] == "lion_pytorch.Lion"
    assert model["optimizer"]["init_args"]["lr"] == 3e-5
    assert model["optimizer"]["init_args"]["weight_decay"] == 0.15
    assert trainer["max_steps"] == 90000 and trainer["precision"] == "bf16-mixed"
    assert trainer["gradient_clip_val"] == 1.0
    assert data["batch_size"] == 16 and data["crop_size"] == 640
    checkpoints = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    monitors = [c["init_args"].get("monitor") for c in checkpoints]
    assert "val/pq" in monitors


@pytest.mark.parametrize(
    ("overlay", "switch"),
    [
        ("no_cross_modal", "cross_modal"),
        ("no_adapter", "visual_adapter"),
        ("no_prompt_tuning", "prompt_tuning"),
    ],
)
def test_ablation_overlay_flips_only_its_switch(
    overlay: str, switch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _print_config(["--config", str(DEMO)], capsys)["model"]["model"]["init_args"]
    ablated = _print_config(_args(CONFIGS / "ablation" / f"{overlay}.yaml"), capsys)
    ablated = ablated["model"]["model"]["init_args"]
    assert base[switch] is True and ablated[switch] is False
    assert {k: v for k, v in ablated.items() if k != switch} == {k: v for k, v in base.items() if k != switch}


@pytest.mark.parametrize("mode", ["sequential", "per_name"])
def test_text_attention_overlays_change_only_the_mode(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = _print_config(["--config", str(DEMO)], capsys)["model"]["model"]["init_args"]
    changed = _print_config(_args(CONFIGS / "ablation" / f"text_{mode}.yaml"), capsys)
    changed = changed["model"]["model"]["init_args"]
    assert base["text_attention"] == "one_way" and changed["text_attention"] == mode
    assert {k: v for k, v in changed.items() if k != "text_attention"} == {
        k: v for k, v in base.items() if k != "text_attention"
    }
