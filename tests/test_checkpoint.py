"""The .ckpt format: segmenter checkpoints outside Lightning (backbone file by sha256), captioner checkpoints,
the early checks. Lightning's own loading of segmenter checkpoints is tested in test_lit_module.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import (
    add_segmenter_entries,
    check_checkpoint,
    load_backbone_file,
    load_captioner,
    load_segmenter,
    merge_module_config,
    save_captioner,
)
from omtseg.modeling.backbone.beit3 import beit3_tiny
from omtseg.modeling.segmenter import OMTSeg


def tiny_segmenter(seed: int = 0) -> OMTSeg:
    torch.manual_seed(seed)
    return OMTSeg(
        backbone="tiny", img_size=64, adapter_channels=32, conv_dim=32, mask_dim=16, hidden_dim=32,
        num_pixel_decoder_layers=1, num_queries=6, num_decoder_layers=2, num_heads=4, decoder_feedforward=48,
        pixel_decoder_feedforward=48,
    )


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_level_lm(tmp_path_factory.mktemp("lm"), ["a", "red", "box"], width=32)


def test_segmenter_checkpoint_loads_and_mismatch_is_clear(tmp_path: Path) -> None:
    source = tiny_segmenter()
    with torch.no_grad():
        source.decoder.query_feat.weight.add_(1.0)
    path = tmp_path / "seg.ckpt"
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"omtseg_format": 1, "state_dict": state}, path)
    target = tiny_segmenter()
    load_segmenter(target, path)
    assert torch.equal(target.decoder.query_feat.weight, source.decoder.query_feat.weight)
    bad = {"omtseg_format": 1, "state_dict": {"model.decoder.extra": torch.zeros(1)}}
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="does not fit"):
        load_segmenter(target, tmp_path / "bad.ckpt")
    with pytest.raises(FileNotFoundError, match="omtseg fit"):
        load_segmenter(target, tmp_path / "none.ckpt")


def test_captioner_checkpoint_round_trip_and_errors(lm_dir: Path, tmp_path: Path) -> None:
    config: dict[str, Any] = dict(
        language_model=str(lm_dir), feature_dim=32, query_dim=32, width=32, num_layers=3, num_heads=2,
        ffn_dim=64,
    )
    torch.manual_seed(1)
    source = SegmentCaptioner(**config)
    with torch.no_grad():
        source.no_query.add_(1.0)
    path = save_captioner(source, config, tmp_path / "cap" / "captioner.ckpt")
    loaded, loaded_config = load_captioner(path)
    assert loaded_config["query_dim"] == 32 and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    # a language model inside the checkpoint's folder is found again after the folder moves
    shutil.copytree(lm_dir, tmp_path / "cap" / "lm")
    save_captioner(source, {**config, "language_model": tmp_path / "cap" / "lm"}, path)
    moved = shutil.move(tmp_path / "cap", tmp_path / "moved")
    assert torch.equal(load_captioner(Path(moved) / "captioner.ckpt")[0].no_query, source.no_query)
    with pytest.raises(FileNotFoundError, match="Captioner checkpoint not found"):
        load_captioner(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a captioner checkpoint"):
        load_captioner(tmp_path / "other.ckpt")


def test_segmenter_checkpoint_takes_its_backbone_file_checked_by_sha256(tmp_path: Path) -> None:
    weights = tmp_path / "beit3_tiny.pth"
    torch.manual_seed(5)
    torch.save(beit3_tiny(img_size=64).state_dict(), weights)
    source = tiny_segmenter()
    checkpoint: dict[str, Any] = {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    add_segmenter_entries(checkpoint, source, load_backbone_file(source, weights))
    frozen = [k for k in checkpoint["state_dict"] if k.startswith("model.adapter.backbone.blocks.")]
    assert checkpoint["omtseg_format"] == 1 and not frozen  # the file stands in for the frozen weights
    path = tmp_path / "seg.ckpt"
    torch.save(checkpoint, path)
    target = tiny_segmenter(seed=1)
    load_segmenter(target, path)
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in target.state_dict().items())
    torch.manual_seed(6)
    torch.save(beit3_tiny(img_size=64).state_dict(), weights)  # same shapes, other weights
    with pytest.raises(ValueError, match="differs from the BEiT-3 file"):
        load_segmenter(tiny_segmenter(), path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="beit3_tiny.pth"):
        load_segmenter(tiny_segmenter(), path)


def test_checks_before_loading(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        check_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read checkpoint"):
        check_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"model": {}}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="not written by omtseg"):
        check_checkpoint(tmp_path / "official.pth")
    torch.save({"omtseg_format": 1, "state_dict": {}, "hyper_parameters": {}}, tmp_path / "bare.ckpt")
    check_checkpoint(tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no saved model config"):
        check_checkpoint(tmp_path / "bare.ckpt", need_model_config=True)


def test_merge_module_config_applies_run_settings_and_refuses_another_architecture() -> None:
    omtseg = "omtseg.modeling.segmenter.OMTSeg"
    segmenter = {"class_path": omtseg, "init_args": {"num_queries": 16, "object_threshold": 0.8}}
    saved = {"model": segmenter, "predict_tasks": ["panoptic", "semantic"], "_instantiator": "x"}
    placeholder = {"class_path": omtseg, "init_args": {"num_queries": 100, "object_threshold": 0.5}}
    given = {"model": placeholder, "predict_tasks": ["panoptic"], "classes_per_batch": 4}
    # Nothing given on the command line: the checkpoint's config, whatever the recipe's placeholder says.
    assert merge_module_config(saved, given, [], path="c.ckpt") == {**given, "model": segmenter,
                                                                    "predict_tasks": ["panoptic", "semantic"]}
    merged = merge_module_config(saved, given, [("model", "object_threshold"), ("predict_tasks",)], path="c")
    assert merged["model"]["init_args"] == {"num_queries": 16, "object_threshold": 0.5}
    assert merged["predict_tasks"] == ["panoptic"]
    with pytest.raises(ValueError, match=r"num_queries is 100 .* c.ckpt was trained with 16"):
        merge_module_config(saved, given, [("model", "num_queries")], path="c.ckpt")
    with pytest.raises(ValueError, match=r"num_queries is 100"):  # a whole segmenter config given
        merge_module_config(saved, given, [("model",)], path="c.ckpt")
