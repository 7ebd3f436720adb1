"""OMTSegModule: vocabulary remapping, parameter groups, training, evaluation and checkpoint contents."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lion_pytorch import Lion

from omtseg.callbacks import PanopticPredictionWriter
from omtseg.data.datamodule import PanopticDataModule, SyntheticData
from omtseg.evaluation.export import export_panoptic_predictions
from omtseg.evaluation.panoptic import pq_compute
from omtseg.lit_module import OMTSegModule
from omtseg.modeling.backbone.beit3 import beit3_tiny
from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.matcher import HungarianMatcher
from omtseg.modeling.prompts import remap_targets
from omtseg.modeling.segmenter import OMTSeg
from omtseg.optim import param_groups
from omtseg.types import Batch, ImageInfo, ImageResult, PanopticResult, PanopticSegment, Targets

TINY = dict(
    backbone="tiny", img_size=64, adapter_channels=32, conv_dim=32, mask_dim=32, num_pixel_decoder_layers=1,
    hidden_dim=32, num_queries=8, num_decoder_layers=2, num_heads=2, decoder_feedforward=64,
    pixel_decoder_feedforward=64,
)


def _module(seed: int = 0, **kwargs) -> OMTSegModule:
    torch.manual_seed(seed)
    model = OMTSeg(**{**TINY, **kwargs.pop("model_kw", {})})
    criterion = SetCriterion(matcher=HungarianMatcher(num_points=256), num_points=256)
    return OMTSegModule(model=model, criterion=criterion, **kwargs)


def _trainer(tmp: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp, **kwargs,
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models are made of small ops: on a busy 2-core machine one intra-op thread costs ~10x less CPU
    # time than two spinning on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PanopticDataModule:
    dm = PanopticDataModule(
        root=str(tmp_path_factory.mktemp("synthetic")),
        synthetic=SyntheticData(num_train=4, num_val=2, num_test=2, image_size=64),
        batch_size=2, crop_size=64, min_scale=1.0, max_scale=1.0, eval_size=64,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEiT-3 weights file (our own state-dict layout) standing in for an official .pth."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "beit3_tiny.pth"
    torch.save(beit3_tiny(img_size=64).state_dict(), path)
    return path


def _targets(labels: list[int], crowd: list[int], hw: tuple[int, int] = (4, 5)) -> Targets:
    n, m = len(labels), len(crowd)
    masks = torch.zeros(n, *hw, dtype=torch.bool)
    for i in range(n):
        masks[i, i] = True
    crowd_masks = torch.zeros(m, *hw, dtype=torch.bool)
    crowd_masks[:, -1] = True
    return Targets(
        labels=torch.tensor(labels, dtype=torch.long), masks=masks, is_thing=torch.ones(n, dtype=torch.bool),
        crowd_labels=torch.tensor(crowd, dtype=torch.long), crowd_masks=crowd_masks,
        void=torch.zeros(hw, dtype=torch.bool), segment_ids=torch.arange(1, n + 1),
    )


def test_remap_targets_moves_labels_and_voids_dropped_crowds() -> None:
    index_map = torch.tensor([2, -1, 0, 1])  # class 1 left out
    (out,) = remap_targets([_targets([0, 3, 2], crowd=[1, 3])], index_map)
    assert out.labels.tolist() == [2, 1, 0]
    assert out.crowd_labels.tolist() == [1]
    assert out.crowd_masks.shape[0] == 1
    assert out.void[-1].all() and not out.void[0].any()  # the dropped crowd's pixels stay ignored
    with pytest.raises(ValueError, match="missing from the sampled vocabulary"):
        remap_targets([_targets([1], crowd=[])], index_map)


def test_optimizer_groups_cover_every_trainable_parameter_once() -> None:
    module = _module(
        lr_multipliers={"model.adapter.backbone": 0.2, "model.prompts": 0.2},
        optimizer=lambda p: Lion(p, lr=1e-4, weight_decay=0.1),
    )
    optimizer = module.configure_optimizers()
    names = {id(p): n for n, p in module.named_parameters()}
    placed = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)
    assert not any(n.startswith("model.adapter.backbone.blocks") for n in placed)  # frozen BEiT-3
    by_name = {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}
    assert by_name["model.prompts.wls"]["lr"] == pytest.approx(0.2 * optimizer.defaults["lr"])
    no_decay = [n for n, g in by_name.items() if g["weight_decay"] == 0.0]
    assert "model.prompts.wls" in no_decay
    assert any("logit_scale" in n for n in no_decay)
    assert all(n in no_decay for n in by_name if n.endswith(".bias") or "norm" in n.split(".")[-2])
    decayed = [n for n, g in by_name.items() if g["weight_decay"] != 0.0]
    assert decayed and all(n.endswith("weight") and by_name[n]["weight_decay"] == 0.1 for n in decayed)
    assert len(param_groups(module)) >= 2


@pytest.mark.parametrize("shuffle", [True, False])
def test_training_vocabulary_is_sampled_and_targets_follow(shuffle: bool, data: PanopticDataModule) -> None:
    module = _module(shuffle_vocabulary=shuffle, classes_per_batch=8)
    batch = next(iter(data.train_dataloader()))
    seen: dict[str, object] = {}

    # Stand-ins record what the step hands the model and the criterion; only the wiring is under test.
    def criterion(pred: object, targets: list[Targets], num_masks: float) -> dict[str, torch.Tensor]:
        seen["targets"] = targets
        return {"loss": torch.zeros(())}

    module.model.forward = lambda images, vocabulary: seen.setdefault("vocabulary", vocabulary)
    module.criterion.forward = criterion
    torch.manual_seed(0)
    module.training_step(batch, 0)
    vocabulary, targets = seen["vocabulary"], seen["targets"]
    assert len(vocabulary) == 8
    order = [batch.vocabulary.names.index(n) for n in vocabulary.names]
    assert {int(c) for t in batch.targets for c in t.labels.tolist()} <= set(order)
    assert (order == sorted(order)) is not shuffle
    for old, new in zip(batch.targets, targets, strict=True):
        assert [vocabulary.names[i] for i in new.labels.tolist()] == [
            batch.vocabulary.names[i] for i in old.labels.tolist()
        ]


def test_training_steps_reduce_the_loss(data: PanopticDataModule) -> None:
    module = _module(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    batch = next(iter(data.train_dataloader()))
    optimizer = module.configure_optimizers()

    def loss_with_seed(seed: int) -> float:
        # Same seed: same sampled vocabulary order and same criterion points, so only the weights differ.
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(module.training_step(batch, 0))

    before = loss_with_seed(0)
    for step in range(6):
        loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = loss_with_seed(0)
    assert torch.isfinite(torch.tensor(after))
    assert after < 0.95 * before  # deterministic measure: no training leaves it at 1.0


def test_validation_logs_every_metric_in_percent(data: PanopticDataModule, tmp_path: Path) -> None:
    (metrics,) = _trainer(tmp_path).validate(_module(), datamodule=data, verbose=False)
    for key in ("pq", "pq_th", "pq_st", "sq", "rq", "miou"):
        assert 0.0 <= metrics[f"val/{key}"] <= 100.0
    assert "val/ap" in metrics


def test_predict_step_returns_results_at_original_size(data: PanopticDataModule) -> None:
    batch = next(iter(data.val_dataloader()))
    module = _module(predict_tasks=("panoptic", "semantic"))
    results = module.predict_step(batch, 0)
    assert len(results) == len(batch)
    for r in results:
        assert tuple(r.panoptic.id_map.shape) == r.info.orig_size
        assert r.semantic.labels.shape == r.info.orig_size
        assert 0 <= int(r.semantic.labels.min()) and int(r.semantic.labels.max()) < len(batch.vocabulary)
        assert r.instances is None


def test_prediction_writer_asks_only_for_what_it_writes(data: PanopticDataModule, tmp_path: Path) -> None:
    # The writer writes panoptic and semantic outputs, never instances: predict_step must not spend
    # instance_top_k full-size masks per image on them.
    module = _module()
    writer = PanopticPredictionWriter(output_dir=str(tmp_path / "out"), overlays=False)
    trainer = _trainer(tmp_path, callbacks=[writer])
    results = trainer.predict(module, dataloaders=data.val_dataloader(), return_predictions=True)
    assert module.predict_tasks == ("panoptic", "semantic")
    for r in (r for batch in results for r in batch):
        assert r.instances is None and r.panoptic is not None and r.semantic is not None
    assert len(list((tmp_path / "out" / "semantic").iterdir())) == 2
    with pytest.raises(ValueError, match="writes only"):
        _trainer(tmp_path, callbacks=[writer]).predict(
            _module(predict_tasks=("instance",)), dataloaders=data.val_dataloader()
        )


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        _module(eval_tasks=("panoptic", "depth"))
    with pytest.raises(ValueError, match="classes_per_batch"):
        _module(classes_per_batch=0)
    with pytest.raises(FileNotFoundError, match="BEiT-3 weights not found"):
        _module(backbone_weights="/nonexistent/beit3.pth")


@pytest.fixture(scope="module")
def pretrained_ckpt(
    data: PanopticDataModule, pretrained: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, OMTSegModule]:
    module = _module(backbone_weights=str(pretrained))
    trainer = _trainer(tmp_path_factory.mktemp("run"), max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_pretrained_checkpoint_stores_a_reference_not_the_frozen_weights(
    pretrained_ckpt: tuple[Path, OMTSegModule], pretrained: Path
) -> None:
    path, module = pretrained_ckpt
    ckpt = torch.load(path, weights_only=True)
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert frozen and not any(n in ckpt["state_dict"] for n in frozen)
    assert ckpt["omtseg_backbone"]["path"] == str(pretrained.resolve())
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert all(n in ckpt["state_dict"] for n in trainable)


def test_checkpoint_round_trip_gives_identical_predictions(
    pretrained_ckpt: tuple[Path, OMTSegModule], data: PanopticDataModule
) -> None:
    path, module = pretrained_ckpt
    fresh = _module(seed=7).model  # other random weights everywhere; the checkpoint must restore them all
    loaded = OMTSegModule.load_from_checkpoint(path, model=fresh, criterion=module.criterion)
    batch = next(iter(data.val_dataloader()))
    module.eval()
    loaded.eval()
    a, b = module.model(batch.images, batch.vocabulary), loaded.model(batch.images, batch.vocabulary)
    torch.testing.assert_close(a.class_logits, b.class_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.mask_logits, b.mask_logits, rtol=0, atol=0)
    ra, rb = module.predict_step(batch, 0), loaded.predict_step(batch, 0)
    for x, y in zip(ra, rb, strict=True):
        assert torch.equal(x.panoptic.id_map, y.panoptic.id_map)


def test_checkpoint_fails_clearly_when_the_backbone_file_is_gone_or_changed(
    pretrained_ckpt: tuple[Path, OMTSegModule], pretrained: Path, tmp_path: Path
) -> None:
    path, module = pretrained_ckpt
    ckpt = torch.load(path, weights_only=True)
    moved, weights = tmp_path / "moved.ckpt", tmp_path / "moved.pth"
    ckpt["hyper_parameters"]["backbone_weights"] = str(weights)
    torch.save(ckpt, moved)
    with pytest.raises(FileNotFoundError, match="moved.pth"):  # the configured file is gone
        OMTSegModule.load_from_checkpoint(moved, model=_module().model, criterion=module.criterion)
    ckpt["hyper_parameters"]["backbone_weights"] = None
    ckpt["omtseg_backbone"]["path"] = str(weights)
    torch.save(ckpt, moved)
    with pytest.raises(FileNotFoundError, match="moved.pth"):  # the recorded file is gone
        OMTSegModule.load_from_checkpoint(moved, model=_module().model, criterion=module.criterion)
    torch.manual_seed(99)
    torch.save(beit3_tiny(img_size=64).state_dict(), weights)  # same shapes, other weights
    with pytest.raises(ValueError, match="differs from the BEiT-3 file"):
        OMTSegModule.load_from_checkpoint(moved, model=_module().model, criterion=module.criterion)


def test_checkpoint_of_another_model_or_program_is_rejected(
    pretrained_ckpt: tuple[Path, OMTSegModule], tmp_path: Path
) -> None:
    path, module = pretrained_ckpt
    other = _module(model_kw={"hidden_dim": 48}).model
    with pytest.raises(ValueError, match="does not fit this model"):
        OMTSegModule.load_from_checkpoint(path, model=other, criterion=module.criterion)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["omtseg_format"]
    torch.save(ckpt, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not written by omtseg"):
        OMTSegModule.load_from_checkpoint(
            tmp_path / "foreign.ckpt", model=_module().model, criterion=module.criterion
        )


def test_test_metrics_are_scored_at_the_original_size(tmp_path: Path) -> None:
    # Images of 64 px evaluated at 48 px: predictions go back to 64 px and meet the untransformed ground
    # truth, so `omtseg test` gives the PQ that the COCO panoptic API computes on exported files.
    root = tmp_path / "synthetic"
    dm = PanopticDataModule(
        root=str(root), synthetic=SyntheticData(num_train=2, num_val=2, num_test=3, image_size=64),
        batch_size=2, crop_size=64, min_scale=1.0, max_scale=1.0, eval_size=48,
    )
    module = _module(eval_tasks=("panoptic",))
    exported: list[tuple[ImageInfo, PanopticResult]] = []

    def predict(batch: Batch, tasks) -> list[ImageResult]:
        # A known prediction: each image's ground truth without its last segment, at the original size.
        results = []
        for info, original in zip(batch.infos, batch.originals, strict=True):
            truth = original.targets
            assert info.orig_size == (64, 64) and tuple(truth.void.shape) == (64, 64)
            id_map = torch.zeros(info.orig_size, dtype=torch.int32)
            segments = []
            for k in range(max(len(truth.labels) - 1, 1)):
                id_map[truth.masks[k]] = k + 1
                segments.append(PanopticSegment(
                    id=k + 1, label=int(truth.labels[k]), is_thing=bool(truth.is_thing[k]), score=1.0,
                    area=int(truth.masks[k].sum()),
                ))
            panoptic = PanopticResult(id_map=id_map, segments=segments)
            exported.append((info, panoptic))
            results.append(ImageResult(info=info, panoptic=panoptic))
        return results

    module.model.predict = predict
    (metrics,) = _trainer(tmp_path).test(module, datamodule=dm, verbose=False)
    vocabulary = dm.datasets["test"].vocabulary
    export_panoptic_predictions(exported, vocabulary=vocabulary, json_path=tmp_path / "pred.json")
    gt_folder = root / "panoptic" / "test"
    reference = pq_compute(root / "panoptic_test.json", tmp_path / "pred.json", gt_folder=gt_folder)
    assert 0.0 < reference["All"]["pq"] < 1.0
    assert metrics["test/pq"] == pytest.approx(100.0 * reference["All"]["pq"], abs=1e-3)
