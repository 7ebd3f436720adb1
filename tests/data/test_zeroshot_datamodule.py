"""The zero-shot evaluation datamodule and the synthetic benchmark layouts it is tested on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omtseg.data.benchmark_registry import BENCHMARKS, zero_shot_vocabulary
from omtseg.data.synthetic_benchmark import write_synthetic_benchmark
from omtseg.data.zeroshot_datamodule import ZeroShotDataModule, benchmark_missing, benchmark_tasks
from omtseg.evaluation.panoptic import PanopticQuality, pq_compute
from omtseg.evaluation.pq import paint_targets
from omtseg.evaluation.semantic import SemanticMetric
from omtseg.types import IGNORE_INDEX, Batch, PanopticResult, PanopticSegment, Targets

SEMANTIC = ["ade20k_150", "ade20k_847", "pascal_context_59", "pascal_context_459", "pascal_voc_20"]


def _batches(root: Path, benchmark: str, **kw: object) -> list[Batch]:
    data = ZeroShotDataModule(benchmark=benchmark, root=str(root), num_workers=0, **kw)
    data.setup("test")
    return list(data.test_dataloader())


@pytest.mark.parametrize("benchmark", SEMANTIC)
def test_semantic_benchmark_batches(tmp_path: Path, benchmark: str) -> None:
    spec = write_synthetic_benchmark(tmp_path, benchmark, num_images=3, image_size=37, seed=1)
    batches = _batches(tmp_path, benchmark, eval_size=45, batch_size=2, size_divisibility=32)
    assert [len(b) for b in batches] == [2, 1]
    k = spec.num_classes
    for batch in batches:
        assert batch.vocabulary == zero_shot_vocabulary(benchmark) and len(batch.vocabulary) == k
        assert batch.targets is None  # label maps have no instances: mIoU only
        assert batch.images.dtype == torch.uint8 and batch.images.shape[-2:] == (64, 64)
        assert batch.semantic.shape == (len(batch), 64, 64)
        assert batch.semantic.min() == IGNORE_INDEX and batch.semantic.max() < k
        assert bool((batch.semantic[batch.padding_mask] == IGNORE_INDEX).all())
        # The long side (37 px high) is resized to 45; the 3/4-wide images are 34 px wide after it.
        assert all(info.resized_size == (45, 34) and info.orig_size == (37, 28) for info in batch.infos)
    assert benchmark_tasks(benchmark) == ("semantic",)


def test_ade20k_150_panoptic_batches_have_targets_and_semantic(tmp_path: Path) -> None:
    write_synthetic_benchmark(tmp_path, "ade20k_150_panoptic", num_images=2, image_size=40)
    (batch,) = _batches(tmp_path, "ade20k_150_panoptic", eval_size=None, batch_size=2)
    assert batch.targets is not None and batch.semantic is not None
    vocabulary = batch.vocabulary
    for i, t in enumerate(batch.targets):
        # One stuff background and up to three thing rectangles (a later one may cover an earlier one).
        assert [vocabulary.is_thing[k] for k in t.labels.tolist()].count(False) == 1
        assert 2 <= len(t.labels) <= 4 and t.is_thing.sum() == len(t.labels) - 1
        # Panoptic and semantic ground truth agree wherever a segment lies.
        assert torch.equal(t.semantic(), batch.semantic[i])
    assert benchmark_tasks("ade20k_150_panoptic") == ("panoptic", "semantic", "instance")


@pytest.mark.parametrize("benchmark", SEMANTIC)
def test_ground_truth_as_prediction_gives_full_miou(tmp_path: Path, benchmark: str) -> None:
    write_synthetic_benchmark(tmp_path, benchmark, num_images=2, image_size=32)
    metric = SemanticMetric(num_classes=BENCHMARKS[benchmark].num_classes)
    worse = SemanticMetric(num_classes=BENCHMARKS[benchmark].num_classes)
    for batch in _batches(tmp_path, benchmark, eval_size=None):
        truth = batch.semantic[0]
        metric.update(truth.clamp(min=0), truth)
        worse.update(torch.zeros_like(truth), truth)  # everything predicted as class 0
    assert metric.compute()["mIoU"] == 1.0 and metric.compute()["pACC"] == 1.0
    assert worse.compute()["mIoU"] < 0.5


def _as_prediction(t: Targets) -> PanopticResult:
    id_map, ids, labels, _ = paint_targets(t)
    segments = [
        PanopticSegment(id=int(i), label=int(k), is_thing=bool(t.is_thing[n]), score=1.0, area=0)
        for n, (i, k) in enumerate(zip(ids.tolist(), labels.tolist(), strict=True))
    ]
    return PanopticResult(id_map=id_map.to(torch.int32), segments=segments)


def test_ground_truth_as_prediction_gives_full_pq(tmp_path: Path) -> None:
    spec = write_synthetic_benchmark(tmp_path, "ade20k_150_panoptic", num_images=3, image_size=48)
    # The files as written: panopticapi's computation of GT against itself.
    gt_json = spec.path(spec.panoptic_json, "val", tmp_path)
    files = pq_compute(gt_json, gt_json, workers=1)
    assert files["All"]["pq"] == 1.0 and files["Things"]["n"] > 0 and files["Stuff"]["n"] > 0
    # The same ground truth through the datamodule and the in-loop metric.
    metric = PanopticQuality(vocabulary=zero_shot_vocabulary("ade20k_150_panoptic"))
    dropped = PanopticQuality(vocabulary=zero_shot_vocabulary("ade20k_150_panoptic"))
    for batch in _batches(tmp_path, "ade20k_150_panoptic", eval_size=None):
        (t,) = batch.targets
        metric.update([_as_prediction(t)], [t])
        keep = torch.arange(len(t.labels)) > 0  # lose the background segment: a false negative
        fields = ("labels", "masks", "is_thing", "segment_ids")
        partial = replace(t, **{f: getattr(t, f)[keep] for f in fields})
        dropped.update([_as_prediction(partial)], [t])
    assert metric.compute()["All"]["pq"] == 1.0
    assert dropped.compute()["Stuff"]["pq"] == 0.0 and dropped.compute()["Things"]["pq"] == 1.0


def test_synthetic_benchmark_files_and_determinism(tmp_path: Path) -> None:
    a = write_synthetic_benchmark(tmp_path / "a", "ade20k_847", num_images=1, image_size=20, seed=3)
    write_synthetic_benchmark(tmp_path / "b", "ade20k_847", num_images=1, image_size=20, seed=3)
    label = a.path(a.labels, "val", tmp_path / "a") / "synthetic_val_0000.tif"
    with Image.open(label) as im:
        assert im.mode == "I;16" and im.size == (16, 20)
        values = np.asarray(im)
    assert values.max() == 65535 and (values[values != 65535] < 847).all()
    twin = a.path(a.labels, "val", tmp_path / "b") / label.name
    assert label.read_bytes() == twin.read_bytes()
    with pytest.raises(ValueError, match="at least 1 image"):
        write_synthetic_benchmark(tmp_path, "pascal_voc_20", num_images=0)
    with pytest.raises(ValueError, match="Unknown zero-shot benchmark"):
        write_synthetic_benchmark(tmp_path, "coco")


def test_benchmark_missing_names_the_prepare_command(tmp_path: Path) -> None:
    reason = benchmark_missing("pascal_context_459", root=tmp_path)
    assert reason is not None and "omtseg prepare pascal_context_459" in reason
    write_synthetic_benchmark(tmp_path, "pascal_context_459", num_images=1, image_size=16)
    assert benchmark_missing("pascal_context_459", root=tmp_path) is None
    assert "ade20k_150" in (benchmark_missing("ade20k_150_panoptic", root=tmp_path) or "")
    # A layout that exists but belongs to no benchmark is an error, not a skip.
    spec = BENCHMARKS["ade20k_150_panoptic"]
    write_synthetic_benchmark(tmp_path, "ade20k_150_panoptic", num_images=1, image_size=16)
    spec.path(spec.panoptic_json, "val", tmp_path).write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError):
        benchmark_missing("ade20k_150_panoptic", root=tmp_path)


def test_datamodule_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown zero-shot benchmark 'ade'"):
        ZeroShotDataModule(benchmark="ade")
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        ZeroShotDataModule(benchmark="pascal_voc_20", split="test")
    with pytest.raises(ValueError, match="batch_size"):
        ZeroShotDataModule(benchmark="pascal_voc_20", batch_size=0)
    data = ZeroShotDataModule(benchmark="pascal_voc_20", root=str(tmp_path))
    with pytest.raises(ValueError, match="not 'fit'"):
        data.setup("fit")
    with pytest.raises(RuntimeError, match="setup"):
        data.test_dataloader()
    with pytest.raises(FileNotFoundError, match="omtseg prepare pascal_voc_20"):
        data.setup("test")


def test_root_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic_benchmark(tmp_path, "pascal_context_59", num_images=1, image_size=16, split="train")
    monkeypatch.setenv("OMTSEG_DATASETS", str(tmp_path))
    data = ZeroShotDataModule(benchmark="pascal_context_59", split="train", eval_size=None)
    assert data.root == tmp_path and data.tasks == ("semantic",)
    data.setup("validate")
    (batch,) = list(data.val_dataloader())
    assert len(batch.vocabulary) == 59 and batch.infos[0].file_name == "synthetic_train_0000.jpg"
    assert len(list(data.predict_dataloader())) == 1
