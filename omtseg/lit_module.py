"""The LightningModule: wires the segmenter, its criterion, the optimizer and the evaluation metrics.

It owns the training/validation/test/predict steps, logging (``train/loss_*``, ``val/pq`` ...) and optimizer
parameter groups. Everything it trains arrives by injection (LightningCLI builds the parts from ``class_path``
configs), so the modules themselves know nothing of Lightning. The layers that own the rest are called, not
repeated: the prompted vocabulary of a batch (:func:`omtseg.modeling.prompts.prompt_vocabulary`), the
evaluation protocol (:class:`omtseg.evaluation.protocol.SegmentationEvaluator`) and the checkpoint format
(:mod:`omtseg.checkpoint`: the config, the trainable weights, and the frozen BEiT-3 as weights or as a
checked reference to its file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lion_pytorch import Lion
from torch import Tensor

from omtseg.checkpoint import (
    add_segmenter_entries,
    check_state_fits,
    complete_segmenter_state,
    is_plain,
    load_backbone_file,
)
from omtseg.evaluation.protocol import SegmentationEvaluator
from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.postprocess import TASKS
from omtseg.modeling.prompts import prompt_vocabulary
from omtseg.modeling.segmenter import OMTSeg
from omtseg.optim import apply_lr_scale, param_groups
from omtseg.types import Batch, ImageResult, Predictions, Targets, Vocabulary


class OMTSegModule(L.LightningModule):
    """Training, evaluation and prediction of an :class:`~omtseg.modeling.segmenter.OMTSeg`.

    Args:
        model: the segmenter (BEiT-3 frozen inside it; its other parts trainable).
        criterion: the set criterion (matcher inside).
        optimizer: builds the optimizer from parameter groups (Lion by default; lr and weight decay
            come from the config).
        scheduler: builds the learning-rate schedule from the optimizer; stepped every optimizer step.
            None keeps the learning rate constant.
        lr_multipliers: module prefix (relative to this module, e.g. ``model.prompts``) -> learning-rate
            multiplier, for the trainable parts of the pretrained backbone.
        classes_per_batch: classes each training batch is prompted with (present ones plus random
            negatives); None prompts with the whole dataset vocabulary.
        backbone_weights: an official BEiT-3 ``.pth`` loaded into the backbone at construction; the
            checkpoint then records its path and sha256 instead of the frozen weights.
        shuffle_vocabulary: shuffle the class order of every training batch (True, so no class owns a
            text position and the model must read the names). False keeps the dataset order, for randomly
            initialised trunks (the tiny demo): random frozen attention does not tie a ``<WLS>`` token to
            the name after it, so there the position of the entry is what identifies the class.
        eval_tasks: what validation/test compute: "panoptic" (PQ), "semantic" (mIoU), "instance" (AP).
        predict_tasks: what ``predict_step`` returns per image.
    """

    def __init__(
        self,
        *,
        model: OMTSeg,
        criterion: SetCriterion,
        optimizer: OptimizerCallable = Lion,
        scheduler: LRSchedulerCallable | None = None,
        lr_multipliers: dict[str, float] | None = None,
        classes_per_batch: int | None = None,
        backbone_weights: str | None = None,
        shuffle_vocabulary: bool = True,
        eval_tasks: Sequence[str] = TASKS,
        predict_tasks: Sequence[str] = TASKS,
    ) -> None:
        super().__init__()
        for name, tasks in (("eval_tasks", eval_tasks), ("predict_tasks", predict_tasks)):
            unknown = set(tasks) - set(TASKS)
            if unknown:
                raise ValueError(f"{name} has unknown tasks {sorted(unknown)}; choose from {TASKS}.")
        if classes_per_batch is not None and classes_per_batch < 1:
            raise ValueError(f"classes_per_batch={classes_per_batch}; use a positive number or None (all).")
        # Built in Python, the parts are live objects: they are left out (their weights are in the state
        # dict), so checkpoints stay loadable with weights_only=True. Under LightningCLI the hyperparameters
        # are the parsed config instead (class_path dicts, with the "_instantiator" Lightning adds to rebuild
        # them at load), all plain: then the parts are kept, so a checkpoint rebuilds its own model.
        parts = {"model": model, "criterion": criterion, "optimizer": optimizer, "scheduler": scheduler}
        self.save_hyperparameters(ignore=[k for k, v in parts.items() if not is_plain(v)])
        if "_instantiator" in self.hparams and is_plain(dict(self.hparams)):
            self.save_hyperparameters()
        self.model = model
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_multipliers = dict(lr_multipliers or {})
        self.classes_per_batch = classes_per_batch
        self.shuffle_vocabulary = shuffle_vocabulary
        self.eval_tasks = tuple(eval_tasks)
        self.predict_tasks = tuple(predict_tasks)
        self.backbone_source: dict[str, str] | None = None
        if backbone_weights is not None:
            self.backbone_source = load_backbone_file(model, backbone_weights)
        self.evaluators: dict[str, SegmentationEvaluator] = {}

    # ----------------------------------------------------------------------------------------------- training

    def forward(self, images: Tensor, vocabulary: Vocabulary) -> Predictions:
        """Raw predictions: class logits (B, Q, K), objectness (B, Q), mask logits (B, Q, H/4, W/4)."""
        return self.model(images, vocabulary)

    def _num_masks(self, targets: Sequence[Targets]) -> float:
        # The criterion normalises by the number of target masks; averaged over processes so every rank
        # divides by the same number (as Mask2Former does), clamped so an empty batch never divides by 0.
        n = torch.tensor(float(sum(len(t.labels) for t in targets)), device=self.device)
        if self._trainer is not None:
            n = self.trainer.strategy.reduce(n, reduce_op="mean")
        return max(float(n), 1.0)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if batch.targets is None:
            raise ValueError("Training needs labelled batches; the train dataloader gives unlabelled images.")
        self.model.note_trained(batch.vocabulary)  # the names calibration (seen_class_penalty) lowers
        vocabulary, targets = prompt_vocabulary(
            batch.vocabulary,
            batch.targets,
            num_classes=self.classes_per_batch,
            shuffle=self.shuffle_vocabulary,
        )
        pred = self.model(batch.images, vocabulary)
        losses = self.criterion(pred, targets, self._num_masks(targets))
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=len(batch)
        )
        self.log("train/loss", losses["loss"].detach(), batch_size=len(batch), prog_bar=True)
        return losses["loss"]

    def configure_optimizers(self) -> Any:
        groups = param_groups(self, lr_multipliers=self.lr_multipliers)
        optimizer = self.optimizer_factory(groups)
        apply_lr_scale(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------------------- evaluation

    def _evaluate(self, split: str, batch: Batch) -> None:
        # One evaluator per split, sized by the evaluated vocabulary (known from the first batch).
        evaluator = self.evaluators.get(split)
        if evaluator is None or evaluator.vocabulary != batch.vocabulary:
            evaluator = SegmentationEvaluator(
                tasks=self.eval_tasks,
                vocabulary=batch.vocabulary,
                labelled=batch.targets is not None,
                device=self.device,
            )
            self.evaluators[split] = evaluator
        results = self.model.predict(evaluator.prediction_batch(batch), tasks=evaluator.tasks)
        evaluator.update(batch, results)

    def _log_metrics(self, split: str) -> None:
        evaluator = self.evaluators.get(split)
        if evaluator is None:
            return
        self.log_dict({f"{split}/{name}": value for name, value in evaluator.compute().items()})
        evaluator.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[ImageResult]:
        """Post-processed results at each image's original size (``predict_tasks``); none for a batch
        whose files were all unreadable (the writer reports ``batch.skipped``)."""
        if len(batch) == 0:
            return []
        return self.model.predict(batch, tasks=self.predict_tasks)

    # -------------------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        add_segmenter_entries(checkpoint, self.model, self.backbone_source, eval_size=self._data_eval_size())

    def _data_eval_size(self) -> int | None:
        """The attached datamodule's evaluation long side (``eval_size``), when it resizes to one."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(datamodule, "eval_size", None)
        return size if isinstance(size, int) else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.backbone_source = complete_segmenter_state(
            checkpoint, self.model, loaded=self.backbone_source
        )
        check_state_fits(checkpoint["state_dict"], self.state_dict())
