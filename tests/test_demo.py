"""The demo's and the ablation's own logic: the learning curve, the results table, the captioner stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omtseg.checkpoint import load_captioner
from omtseg.commands.ablate import results_table, summarize
from omtseg.commands.demo import coco_names, region_captions, train_captioner
from omtseg.commands.runs import learning_curve
from omtseg.data.world import make_world_split
from omtseg.evaluation.caption_java import tools_status
from omtseg.modeling.segmenter import OMTSeg


def test_learning_curve_reads_validation_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/pq\n0,9,4.0,\n0,24,,12.5\n1,49,,40.0\n1,49,3.0,\n")
    assert learning_curve(path) == [
        {"epoch": 0, "step": 24, "val/pq": 12.5},
        {"epoch": 1, "step": 49, "val/pq": 40.0},
    ]


def test_ablation_summary_and_table() -> None:
    runs = {
        "full": [
            {"metrics": {"pq_seen": 50.0, "pq_unseen": 30.0, "pq_novel": 20.0, "miou_seen": 60.0}},
            {"metrics": {"pq_seen": 54.0, "pq_unseen": 34.0, "pq_novel": None, "miou_seen": 62.0}},
        ],
        "random backbone (baseline)": [{"metrics": {"pq_seen": 10.0}}],
    }
    summary = summarize(runs)
    assert summary["full"]["pq_seen"] == (52.0, pytest.approx(2.8284271))
    assert summary["full"]["pq_novel"] == (20.0, 0.0)  # one seed reported it
    lines = results_table(summary).splitlines()
    assert lines[0] == (
        "| variant | PQ seen | PQ unseen | PQ novel | mIoU seen | mIoU unseen | mIoU novel | penalty "
        "| PQ unseen (cal.) | PQ novel (cal.) |"
    )
    assert lines[2] == "| full | 52.0 ± 2.8 | 32.0 ± 2.8 | 20.0 ± 0.0 | 61.0 ± 1.4 | - | - | - | - | - |"
    assert lines[3].startswith("| random backbone (baseline) | 10.0 ± 0.0 | - |")


def test_coco_vocabulary_for_the_sample_images() -> None:
    things, stuff = coco_names()
    assert len(things) == 80 and len(stuff) == 53
    assert "person, people, human" in things


def test_train_captioner_saves_a_loadable_captioner_and_scores_val(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_world_split(root, "train", 2, seed=1)
    make_world_split(root, "val", 1, seed=2)
    torch.manual_seed(0)
    segmenter = OMTSeg(
        backbone="tiny",
        img_size=64,
        adapter_channels=32,
        conv_dim=32,
        mask_dim=16,
        num_pixel_decoder_layers=1,
        hidden_dim=32,
        num_queries=6,
        num_decoder_layers=2,
        num_heads=4,
        decoder_feedforward=48,
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
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"} <= set(result["scores"])
    # The official protocol (PTB tokens, METEOR) wherever pycocoevalcap's Java tools run, labelled otherwise.
    official = tools_status()["ptb_tokenizer"] is None
    assert (result["protocol"] == "official") == official and ("meteor" in result["scores"]) == official
    assert official or result["protocol"].startswith("not the official tokenizer")
    val_regions = len(region_captions(root, "val", 64)[0].captions)
    assert len(result["examples"]) == min(3, val_regions)
    assert all(isinstance(e["prediction"], str) and e["reference"] for e in result["examples"])
    captioner, config = load_captioner(result["checkpoint"])
    assert config["feature_dim"] == 32 and config["query_dim"] == 32 and not config["freeze_language_model"]
    assert captioner.query_proj.in_features == 32
