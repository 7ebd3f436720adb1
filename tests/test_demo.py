"""The demo's and the ablation's own logic: the learning curve, the results table, the captioner stage."""

from __future__ import annotations

from pathlib import Path

import torch

from omtseg.checkpoint import load_captioner
from omtseg.commands.ablate import results_table
from omtseg.commands.demo import coco_names, region_captions, train_captioner
from omtseg.commands.runs import learning_curve
from omtseg.data.synthetic import make_synthetic_panoptic
from omtseg.modeling.segmenter import OMTSeg


def test_learning_curve_reads_validation_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/pq\n0,9,4.0,\n0,24,,12.5\n1,49,,40.0\n1,49,3.0,\n")
    assert learning_curve(path) == [
        {"epoch": 0, "step": 24, "val/pq": 12.5},
        {"epoch": 1, "step": 49, "val/pq": 40.0},
    ]


def test_results_table_has_one_row_per_variant_and_dashes_for_missing() -> None:
    table = results_table(
        {
            "full": {"test/pq": 55.04, "test/sq": 80.0, "test/rq": 66.0, "test/pq_th": 50.0,
                     "test/pq_st": 60.0, "test/miou": 70.0},
            "no visual adapter": {"test/pq": 20.0, "test/miou": float("nan")},
        }
    )
    lines = table.splitlines()
    assert lines[0] == "| variant | PQ | SQ | RQ | PQ_th | PQ_st | mIoU |"
    assert lines[2] == "| full | 55.0 | 80.0 | 66.0 | 50.0 | 60.0 | 70.0 |"
    assert lines[3] == "| no visual adapter | 20.0 | - | - | - | - | - |"


def test_coco_vocabulary_for_the_sample_images() -> None:
    things, stuff = coco_names()
    assert len(things) == 80 and len(stuff) == 53
    assert "person, people, human" in things


def test_train_captioner_saves_a_loadable_captioner_and_scores_val(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_synthetic_panoptic(root, 2, image_size=64, seed=1, split="train")
    make_synthetic_panoptic(root, 1, image_size=64, seed=2, split="val")
    torch.manual_seed(0)
    segmenter = OMTSeg(
        backbone="tiny", img_size=64, adapter_channels=32, conv_dim=32, mask_dim=16,
        num_pixel_decoder_layers=1,
        hidden_dim=32, num_queries=6, num_decoder_layers=2, num_heads=4, decoder_feedforward=48,
        pixel_decoder_feedforward=48,
    )
    ckpt = tmp_path / "seg.ckpt"
    state = {f"model.{k}": v for k, v in segmenter.state_dict().items()}
    torch.save({"omtseg_format": 1, "state_dict": state}, ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_captioner(segmenter, str(ckpt), root, tmp_path / "out", max_steps=2, num_examples=3)
    finally:
        torch.set_num_threads(threads)
    assert set(result["scores"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d"}
    val_regions = len(region_captions(root, "val", 64)[0].captions)
    assert len(result["examples"]) == min(3, val_regions)
    assert all(isinstance(e["prediction"], str) and e["reference"] for e in result["examples"])
    captioner, config = load_captioner(result["checkpoint"])
    assert config["feature_dim"] == 32 and config["query_dim"] == 32 and not config["freeze_language_model"]
    assert captioner.query_proj.in_features == 32
