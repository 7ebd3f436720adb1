"""The demo's and the ablation's own logic: reading the learning curve and writing the results table."""

from __future__ import annotations

from pathlib import Path

from omtseg.ablate import results_table
from omtseg.demo import coco_names, learning_curve


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
