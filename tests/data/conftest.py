"""Shared data fixtures: a small synthetic dataset (generated once per session) and the COCO sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from omtseg.data.coco_panoptic import PanopticSplit
from omtseg.data.synthetic import make_synthetic_panoptic

COCO_SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "coco_panoptic_sample"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_panoptic(root, num_images=24, image_size=64, seed=3, split="train")
    make_synthetic_panoptic(root, num_images=5, image_size=64, seed=3, split="val")
    make_synthetic_panoptic(root, num_images=3, image_size=64, seed=3, split="test")
    return root


@pytest.fixture(scope="session")
def synthetic_train(synthetic_root: Path) -> PanopticSplit:
    # Generated already by synthetic_root: this call only finds the finished files.
    return make_synthetic_panoptic(synthetic_root, num_images=24, image_size=64, seed=3, split="train")


@pytest.fixture(scope="session")
def coco_sample() -> PanopticSplit:
    return PanopticSplit(
        image_dir=str(COCO_SAMPLE / "images"),
        panoptic_dir=str(COCO_SAMPLE / "panoptic"),
        panoptic_json=str(COCO_SAMPLE / "panoptic.json"),
        categories_json=str(COCO_SAMPLE / "panoptic_coco_categories.json"),
    )
