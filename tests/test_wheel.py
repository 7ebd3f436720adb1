"""The built wheel works outside the source tree: package data and the demo's data + prediction path.

The wheel is built from a copy of the sources, installed with ``pip --target`` into a temp folder and run
from another temp folder with only that folder on ``PYTHONPATH``: nothing can come from the checkout but the
recipe YAML, which users give as they give their own. A random tiny model segments the two COCO sample
images that ship with the package, through ``omtseg predict`` as the demo runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from pathlib import Path

import lightning as L
import torch

import omtseg
from omtseg.checkpoint import add_segmenter_entries
from omtseg.cli import build_cli
from omtseg.commands.demo import COCO_SAMPLE, coco_names, predict

site, recipe = Path(sys.argv[1]), sys.argv[2]
assert Path(omtseg.__file__).is_relative_to(site), omtseg.__file__
assert COCO_SAMPLE.is_relative_to(site) and (COCO_SAMPLE / "NOTICE.md").is_file()
images = COCO_SAMPLE / "images"
small = [f"--data.init_args.synthetic.num_{s}" for s in ("train", "val", "test")]
config = ["--config", recipe, *(a for flag in small for a in (flag, "2"))]
torch.manual_seed(0)
cli = build_cli([*config, "--trainer.logger", "false"], run=False)  # the demo's tiny model, random weights
checkpoint = {"state_dict": cli.model.state_dict(), "pytorch-lightning_version": L.__version__}
add_segmenter_entries(checkpoint, cli.model.model, None)
torch.save(checkpoint, "tiny.ckpt")
things, stuff = coco_names()
predict(
    config, "tiny.ckpt", images, Path("predict_coco"),
    "--data.init_args.predict_class_names", json.dumps(things),
    "--data.init_args.predict_stuff_names", json.dumps(stuff),
    "--trainer.enable_progress_bar", "false",
)
print(json.dumps(sorted(p.name for p in images.iterdir())))
"""


@pytest.mark.slow
def test_wheel_runs_the_demo_prediction_outside_the_source_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "omtseg", src / "omtseg", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)]
    subprocess.run(build, check=True)
    (wheel,) = (tmp_path / "dist").glob("omtseg-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)

    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(site), str(REPO / "configs" / "demo.yaml")],
        cwd=run, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = json.loads(result.stdout.strip().splitlines()[-1])
    assert names == ["000000142238.jpg", "000000439180.jpg"]
    out = run / "predict_coco"
    annotations = json.loads((out / "panoptic.json").read_text())["annotations"]
    assert sorted(a["file_name"] for a in annotations) == ["000000142238.png", "000000439180.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000142238.png", "000000439180.png"]
    assert len(json.loads((out / "panoptic.json").read_text())["categories"]) == 133
