"""The pretrained tiny BEiT-3 the repository ships for the open-vocabulary world (weights/).

It must be what `make pretrain` makes: its record names the sha256 of the pre-training config that command
uses, no overrides, float16; `omtseg demo` and `omtseg ablate` reuse it only then (else they pre-train).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from omtseg.io import load_json
from omtseg.modeling.backbone.beit3 import BEiT3, load_beit3_checkpoint

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "beit3_tiny_world.pth"


def test_make_pretrain_writes_the_shipped_file_with_the_recorded_config() -> None:
    makefile = (REPO / "Makefile").read_text()
    (command,) = re.findall(r"^\t\$\(BIN\)/omtseg pretrain (.*)$", makefile, flags=re.M)
    args = command.split()
    config = REPO / args[args.index("--config") + 1]
    assert REPO / args[args.index("--out") + 1] == WEIGHTS and "--half" in args
    record = load_json(WEIGHTS.with_suffix(".json"))
    assert record["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest(), (
        f"{WEIGHTS} was made by another {config.name}; run `make pretrain` and commit the new file"
    )
    assert record["overrides"] == [] and record["half"] is True
    assert record["metrics"]["val/mlm_acc"] > record["metrics"]["val/unigram_acc"]
    assert WEIGHTS.stat().st_size <= 10 * 2**20


def test_shipped_file_loads_into_the_configured_encoder() -> None:
    config = yaml.safe_load((REPO / "configs" / "pretrain" / "world_tiny.yaml").read_text())
    kwargs = config["model"]["init_args"]["model"]["init_args"]["backbone"]["init_args"]
    encoder = BEiT3(**kwargs)
    load_beit3_checkpoint(encoder, WEIGHTS)  # strict: every key and shape
    assert encoder.text_embed.weight.dtype.is_floating_point and encoder.text_embed.weight.abs().sum() > 0
