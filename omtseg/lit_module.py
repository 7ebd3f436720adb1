"""The LightningModule: wires the segmenter, its criterion, the optimizer and the evaluation metrics.

It owns the training/validation/test/predict steps, logging (``train/loss_*``, ``val/pq`` ...), optimizer
parameter groups and checkpoint contents. Everything it trains arrives by injection (LightningCLI builds the
parts from ``class_path`` configs), so the modules themselves know nothing of Lightning.

Checkpoints hold the trainable weights and the config (hyperparameters). The frozen BEiT-3 weights are
stored too when the backbone was randomly initialised; when they came from a pretrained file
(``backbone_weights``) only that file's path and sha256 are stored, and loading fails clearly when the file
is missing or differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lion_pytorch import Lion
from torch import Tensor

from omtseg.evaluation.instance import InstanceAP
from omtseg.evaluation.panoptic import PanopticQuality
from omtseg.evaluation.semantic import SemanticMetric
from omtseg.modeling.backbone.beit3 import BEiT3
from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.postprocess import TASKS
from omtseg.modeling.prompts import sample_vocabulary
from omtseg.modeling.segmenter import OMTSeg
from omtseg.optim import apply_lr_scale, param_groups
from omtseg.types import Batch, ImageResult, Predictions, Targets, Vocabulary

CHECKPOINT_FORMAT = 1
"""Version of the omtseg entries in a ``.ckpt`` (``omtseg_format``)."""


def remap_targets(targets: Sequence[Targets], index_map: Tensor) -> list[Targets]:
    """Targets with labels re-indexed into a sampled vocabulary (see ``prompts.sample_vocabulary``).

    Args:
        targets: per image, labels indexing the dataset vocabulary.
        index_map: (K,) long, new index of each old class, -1 for classes left out.

    Returns:
        The same targets, ``labels``/``crowd_labels`` indexing the sampled vocabulary. Crowd segments of
        classes left out become ``void`` (still ignored, but no longer needing a class).

    Raises:
        ValueError: a non-crowd segment's class was left out (every present class must be sampled).
    """
    out = []
    index_map = index_map.cpu()
    for t in targets:
        labels = index_map[t.labels.cpu()]
        if (labels < 0).any():
            raise ValueError("A target class is missing from the sampled vocabulary; keep every present one.")
        crowd = index_map[t.crowd_labels.cpu()]
        keep = crowd >= 0
        out.append(
            replace(
                t,
                labels=labels.to(t.labels.device),
                crowd_labels=crowd[keep].to(t.crowd_labels.device),
                crowd_masks=t.crowd_masks[keep.to(t.crowd_masks.device)],
                void=t.void | t.crowd_masks[~keep.to(t.crowd_masks.device)].any(0),
            )
        )
    return out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (BEiT-3-large is 1.6 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> bool:
    # Hyperparameters must survive torch.load(weights_only=True): configs, not live objects.
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


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
        # Under LightningCLI the hyperparameters are the parsed config (class_path dicts), which rebuild the
        # model from a checkpoint. Built in Python, the parts are live objects: they are left out (their
        # weights are in the state dict), so checkpoints stay loadable with weights_only=True.
        given = _given_hyperparameters.get() or {}
        parts = {"model": model, "criterion": criterion, "optimizer": optimizer, "scheduler": scheduler}
        self.save_hyperparameters(ignore=[k for k, v in parts.items() if not _plain(given.get(k, v))])
        self.model = model
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_multipliers = dict(lr_multipliers or {})
        self.classes_per_batch = classes_per_batch
        self.shuffle_vocabulary = shuffle_vocabulary
        self.eval_tasks = tuple(eval_tasks)
        self.predict_tasks = tuple(predict_tasks)
        self.backbone_prefix = self._backbone_prefix()
        self.backbone_source: dict[str, str] | None = None
        if backbone_weights is not None:
            path = Path(backbone_weights)
            if not path.is_file():
                raise FileNotFoundError(
                    f"BEiT-3 weights not found: {path}. Give the official .pth file (backbone_weights) "
                    "or null to start from random weights."
                )
            model.load_backbone_weights(str(path))
            self.backbone_source = {"path": str(path.resolve()), "sha256": file_sha256(path)}
        self.metrics: dict[str, dict[str, Any]] = {}
        self._metric_vocabulary: dict[str, Vocabulary] = {}

    def _backbone_prefix(self) -> str:
        found = [name for name, m in self.named_modules() if isinstance(m, BEiT3)]
        if len(found) != 1:
            raise ValueError(f"Expected exactly one BEiT3 inside the model, found {len(found)}: {found}.")
        return found[0]

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
        present = {int(c) for t in batch.targets for c in t.labels.tolist()}
        vocabulary, index_map = sample_vocabulary(batch.vocabulary, present, self.classes_per_batch)
        if not self.shuffle_vocabulary:
            kept = (index_map >= 0).nonzero()[:, 0]  # the sampled classes, in dataset order
            vocabulary = batch.vocabulary.subset(kept.tolist())
            index_map = torch.full_like(index_map, -1)
            index_map[kept] = torch.arange(len(kept))
        targets = remap_targets(batch.targets, index_map)
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

    def _split_metrics(self, split: str, vocabulary: Vocabulary, labelled: bool) -> dict[str, Any]:
        # Metrics are sized by the evaluated vocabulary, known from the first batch; one set per split.
        # A plain dict, not a ModuleDict: InstanceAP (COCOeval) is no Module, and none of them holds weights.
        if self._metric_vocabulary.get(split) != vocabulary:
            made: dict[str, Any] = {}
            if "panoptic" in self.eval_tasks and labelled:
                made["panoptic"] = PanopticQuality(vocabulary=vocabulary)
            if "semantic" in self.eval_tasks:
                made["semantic"] = SemanticMetric(num_classes=len(vocabulary))
            if "instance" in self.eval_tasks and labelled:
                made["instance"] = InstanceAP(vocabulary=vocabulary)
            self.metrics[split] = {k: m.to(self.device) if k != "instance" else m for k, m in made.items()}
            self._metric_vocabulary[split] = vocabulary
        return self.metrics[split]

    def _evaluate(self, split: str, batch: Batch) -> None:
        if batch.targets is None and batch.semantic is None:
            raise ValueError(f"{split} needs labelled batches; its dataloader gives images without labels.")
        metrics = self._split_metrics(split, batch.vocabulary, labelled=batch.targets is not None)
        tasks = [t for t in self.eval_tasks if t in metrics]
        targets: list[Targets] | None
        if batch.originals is not None:
            # As official evaluations do: predictions resized back to each image's original size and scored
            # against the untransformed ground truth.
            results = self.model.predict(
                replace(batch, infos=[replace(i, flipped=False) for i in batch.infos]), tasks=tasks
            )
            truths = [o.semantic_labels() for o in batch.originals] if "semantic" in metrics else []
            targets = None
            if batch.targets is not None:
                targets = [o.targets for o in batch.originals if o.targets is not None]
                assert len(targets) == len(batch), "EvalTransform keeps the targets of labelled samples"
        else:
            # Score at the transformed content size, where the labels are: predictions are made for an
            # "original" size equal to the resized one (no flip) and the batch padding is cut off the labels.
            infos = [replace(i, orig_size=i.resized_size, flipped=False) for i in batch.infos]
            results = self.model.predict(replace(batch, infos=infos), tasks=tasks)
            # batch.semantic holds the labels of mIoU-only benchmarks; else they follow from the targets.
            truths = []
            for i, info in enumerate(infos if "semantic" in metrics else []):
                h, w = info.resized_size
                if batch.semantic is not None:
                    truths.append(batch.semantic[i, :h, :w])
                else:
                    assert batch.targets is not None  # one of the two was checked above
                    truths.append(batch.targets[i].semantic()[:h, :w])
            targets = None
            if batch.targets is not None:
                targets = [
                    _crop_targets(t, i.resized_size) for t, i in zip(batch.targets, infos, strict=True)
                ]
        if targets is not None:
            if "panoptic" in metrics:
                metrics["panoptic"].update([r.panoptic for r in results], targets)
            if "instance" in metrics:
                metrics["instance"].update([r.instances for r in results], targets)
        if "semantic" in metrics:
            for r, truth in zip(results, truths, strict=True):
                metrics["semantic"].update(r.semantic, truth)

    def _log_metrics(self, split: str) -> None:
        if split not in self.metrics:
            return
        metrics = self.metrics[split]
        # Percent, as papers and detectron2 report them.
        values: dict[str, float] = {}
        if "panoptic" in metrics:
            pq = metrics["panoptic"].compute()
            for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
                for name in ("pq", "sq", "rq"):
                    values[f"{split}/{name}{suffix}"] = 100.0 * pq[group][name]
        if "semantic" in metrics:
            values[f"{split}/miou"] = 100.0 * metrics["semantic"].compute()["mIoU"]
        if "instance" in metrics:
            values[f"{split}/ap"] = 100.0 * metrics["instance"].compute()["AP"]
        self.log_dict(values)
        for metric in metrics.values():
            metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[ImageResult]:
        """Post-processed results at each image's original size (``predict_tasks``)."""
        return self.model.predict(batch, tasks=self.predict_tasks)

    # -------------------------------------------------------------------------------------------- checkpoints

    def _frozen_backbone_keys(self) -> set[str]:
        backbone = self.get_submodule(self.backbone_prefix)
        return {f"{self.backbone_prefix}.{n}" for n, p in backbone.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["omtseg_format"] = CHECKPOINT_FORMAT
        if self.backbone_source is None:
            return  # random-init backbone: its weights exist nowhere else, keep them
        checkpoint["omtseg_backbone"] = dict(self.backbone_source)
        frozen = self._frozen_backbone_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "omtseg_format" not in checkpoint:
            raise ValueError(
                "This checkpoint was not written by omtseg (no 'omtseg_format' entry); give a .ckpt saved by "
                "`omtseg fit`. Official BEiT-3 .pth files go to model.backbone_weights instead."
            )
        state = checkpoint["state_dict"]
        source = checkpoint.get("omtseg_backbone")
        if source is not None:
            self._restore_backbone(source)
            own = self.state_dict()
            for key in self._frozen_backbone_keys():
                state.setdefault(key, own[key])
        _check_state_fits(state, self.state_dict())

    def _restore_backbone(self, source: dict[str, str]) -> None:
        if self.backbone_source is not None and self.backbone_source["sha256"] == source["sha256"]:
            return  # the same file was loaded at construction
        path = Path(source["path"])
        if not path.is_file():
            raise FileNotFoundError(
                f"The checkpoint's frozen BEiT-3 weights come from {path}, which is missing. Restore it "
                f"(sha256 {source['sha256']}) or set model.backbone_weights to a copy of it."
            )
        digest = file_sha256(path)
        if digest != source["sha256"]:
            raise ValueError(
                f"{path} differs from the BEiT-3 file this checkpoint was trained with (sha256 {digest}, "
                f"expected {source['sha256']}); use the original weights file."
            )
        self.model.load_backbone_weights(str(path))
        self.backbone_source = {"path": str(path), "sha256": digest}


def check_checkpoint(path: str | Path) -> None:
    """Fail early and clearly unless ``path`` is an omtseg ``.ckpt`` (before Lightning reads it).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, or one not written by omtseg (e.g. an official BEiT-3 ``.pth``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}. Give the .ckpt written by `omtseg fit`.")
    try:
        # mmap: only the header is read, whatever the checkpoint's size.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        raise ValueError(f"Cannot read checkpoint {path}: {e}. Give a .ckpt written by `omtseg fit`.") from e
    if not isinstance(checkpoint, dict) or "omtseg_format" not in checkpoint:
        raise ValueError(
            f"{path} was not written by omtseg (no 'omtseg_format' entry); give a .ckpt saved by "
            "`omtseg fit`. Official BEiT-3 .pth files go to model.backbone_weights instead."
        )


def _check_state_fits(state: dict[str, Tensor], own: dict[str, Tensor]) -> None:
    """Raise a clear error when a checkpoint's weights do not fit this model (another config or model)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} weights missing (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unknown weights (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        details.append(
            f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    raise ValueError(
        "The checkpoint does not fit this model: " + "; ".join(details) + ". It was trained with another "
        "model config; load it with its own config (omitting model options lets the checkpoint's apply)."
    )


def _crop_targets(t: Targets, size: tuple[int, int]) -> Targets:
    """Targets cut to their content (h, w), dropping the batch padding (all void)."""
    h, w = size
    return replace(
        t,
        masks=t.masks[:, :h, :w],
        crowd_masks=t.crowd_masks[:, :h, :w],
        void=t.void[:h, :w],
    )
