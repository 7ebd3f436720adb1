"""Calibrated stacking: the seen-class penalty, the names it applies to, and the sweep that chooses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omtseg.checkpoint import TRAINED_NAMES_KEY, add_segmenter_entries, complete_segmenter_state
from omtseg.data.datamodule import PanopticDataModule, WorldData
from omtseg.data.world import make_world_split, world_categories
from omtseg.evaluation.calibration import harmonic_mean, sweep_seen_penalty
from omtseg.evaluation.protocol import SegmentationEvaluator
from omtseg.modeling.segmenter import OMTSeg, seen_class_offsets
from omtseg.types import Vocabulary

TINY = dict(
    backbone="tiny", img_size=64, adapter_channels=32, conv_dim=32, mask_dim=32, num_pixel_decoder_layers=1,
    hidden_dim=32, num_queries=8, num_decoder_layers=1, num_heads=4, decoder_feedforward=64,
    pixel_decoder_feedforward=64, text_attention="per_name", object_threshold=0.0, overlap_threshold=0.0,
)  # fmt: skip


def tiny_model(**kwargs: object) -> OMTSeg:
    torch.manual_seed(0)
    return OMTSeg(**{**TINY, **kwargs}).eval()  # type: ignore[arg-type]


def test_offsets_follow_any_trained_synonym_case_and_spacing_aside() -> None:
    vocab = Vocabulary.from_names(["Red  Ball", "orange ball", "sky, heaven"])
    offsets = seen_class_offsets(vocab, {"red ball", "Heaven"}, 1.5)
    assert offsets is not None and offsets.tolist() == [1.5, 0.0, 1.5]
    assert seen_class_offsets(vocab, {"red ball"}, 0.0) is None  # no penalty: nothing to subtract
    assert seen_class_offsets(vocab, set(), 2.0) is None  # names unknown: nothing to subtract


def test_model_records_names_and_checkpoints_keep_them() -> None:
    model = tiny_model()
    model.note_trained(Vocabulary.from_names(["red ball", "Sky"]))
    model.note_trained(Vocabulary.from_names(["sand"]))
    assert model.trained_names == {"red ball", "sky", "sand"}
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    add_segmenter_entries(checkpoint, model, None)
    assert checkpoint[TRAINED_NAMES_KEY] == ["red ball", "sand", "sky"]
    other = tiny_model()
    complete_segmenter_state(checkpoint, other)
    assert other.trained_names == model.trained_names
    with pytest.raises(ValueError, match="seen_class_penalty"):
        tiny_model(seen_class_penalty=-1.0)
    # A penalty on a model that knows no training names would change nothing, silently: refused.
    with pytest.raises(ValueError, match="records none"):
        tiny_model(seen_class_penalty=1.0).class_penalty(Vocabulary.from_names(["a"]))


def _batch(vocab: Vocabulary):  # noqa: ANN202 - a Batch of two random images
    from benchmarks.vocab_scaling import _batch as bench_batch

    batch = bench_batch(vocab, 64)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=generator)
    return type(batch)(
        images=images, padding_mask=torch.zeros((2, 64, 64), dtype=torch.bool), targets=None,
        infos=batch.infos * 2, vocabulary=vocab,
    )  # fmt: skip


def test_penalty_lowers_exactly_the_trained_classes() -> None:
    vocab = Vocabulary.from_names(["red ball", "blue box", "orange cross", "sky"])
    batch = _batch(vocab)
    model = tiny_model()
    plain = model.predict(batch, tasks=("panoptic", "semantic"))
    model.note_trained(Vocabulary.from_names(["red ball", "blue box", "sky"]))
    # Known names but no penalty: the very same results.
    same = model.predict(batch, tasks=("panoptic", "semantic"))
    for a, b in zip(plain, same, strict=True):
        assert torch.equal(a.semantic.labels, b.semantic.labels)
        assert [s.label for s in a.panoptic.segments] == [s.label for s in b.panoptic.segments]
    # A penalty larger than any logit gap: only the untrained class (index 2) can win a pixel.
    calibrated = model.predict(batch, tasks=("semantic",), seen_class_penalty=1e4)
    for r in calibrated:
        assert set(r.semantic.labels.unique().tolist()) == {2}
    # The model's own setting is used when the call gives none.
    model.seen_class_penalty = 1e4
    for r in model.predict(batch, tasks=("semantic",)):
        assert set(r.semantic.labels.unique().tolist()) == {2}


def test_sweep_scores_each_penalty_as_the_evaluator_does(tmp_path: Path) -> None:
    root = tmp_path / "world"
    data = PanopticDataModule(
        root=str(root),
        world=WorldData(num_train=2, num_val=2, num_test=6, test_split="unseen_val", image_size=64),
        batch_size=2, eval_batch_size=3, num_workers=0, crop_size=64, eval_size=64,
    )  # fmt: skip
    data.prepare_data()
    data.setup("test")
    model = tiny_model()
    with pytest.raises(ValueError, match="no training class names"):
        sweep_seen_penalty(model, data.test_dataloader(), [0.0])
    model.note_trained(Vocabulary.from_names([c["name"] for c in world_categories(("seen",))]))
    sweep = sweep_seen_penalty(model, data.test_dataloader(), [2.0, 0.0, 2.0, 0.5])
    assert [r["penalty"] for r in sweep.rows] == [0.0, 0.5, 2.0]  # sorted, once each
    for r in sweep.rows:
        assert r["harmonic"] == pytest.approx(harmonic_mean(r["pq_seen"], r["pq_unseen"]))
    best = max(r["harmonic"] for r in sweep.rows)
    assert sweep.best == min(r["penalty"] for r in sweep.rows if r["harmonic"] == best)
    # The 0 row is the uncalibrated evaluation: the evaluator on model.predict, as `omtseg test` runs it.
    evaluator = None
    for batch in data.test_dataloader():
        evaluator = evaluator or SegmentationEvaluator(
            tasks=("panoptic",), vocabulary=batch.vocabulary, labelled=True
        )
        evaluator.update(batch, model.predict(evaluator.prediction_batch(batch), tasks=("panoptic",)))
    assert evaluator is not None
    values = evaluator.compute()
    assert sweep.rows[0]["pq"] == pytest.approx(values["pq"])
    assert sweep.rows[0]["pq_unseen"] == pytest.approx(values["pq_unseen"])
    assert "(chosen)" in sweep.table()


def test_unseen_val_split_holds_unseen_compositions_apart_from_the_test_images(tmp_path: Path) -> None:
    val = make_world_split(tmp_path, "unseen_val", 6)
    test = make_world_split(tmp_path, "unseen", 6)
    import json

    val_json = json.loads(Path(val.panoptic_json).read_text())
    test_json = json.loads(Path(test.panoptic_json).read_text())
    assert val_json["categories"] == test_json["categories"] == world_categories()
    unseen_ids = {c["id"] for c in world_categories() if c["split"] == "unseen"}
    novel_ids = {c["id"] for c in world_categories() if c["split"] == "novel"}
    for ann in val_json["annotations"]:
        ids = {s["category_id"] for s in ann["segments_info"]}
        assert ids & unseen_ids and not ids & novel_ids  # an unseen composition in every image, no novel
    a = (Path(val.image_dir) / "000000.png").read_bytes()
    b = (Path(test.image_dir) / "000000.png").read_bytes()
    assert a != b  # other images than the test split's
