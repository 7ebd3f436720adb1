"""The evaluation protocol of a split: which metrics run, at which size predictions are scored, the numbers.

As official evaluations do, predictions are scored at each image's original size against the untransformed
ground truth when the batch keeps it (``Batch.originals``, what ``EvalTransform`` gives). Otherwise they are
scored at the transformed content size, where the batch's labels are, with the padding cut off. Test-time
flips are undone by the model, so the batch handed to it is never marked flipped.

Metrics are percent, as papers and detectron2 report them: ``pq, sq, rq`` (and ``_th``/``_st`` for things and
stuff), ``miou``, ``ap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from omtseg.evaluation.instance import InstanceAP
from omtseg.evaluation.panoptic import PanopticQuality
from omtseg.evaluation.semantic import SemanticMetric
from omtseg.types import Batch, ImageResult, Targets, Vocabulary


def crop_targets(t: Targets, size: tuple[int, int]) -> Targets:
    """Targets cut to their content (h, w), dropping the batch padding (all void)."""
    h, w = size
    return replace(t, masks=t.masks[:, :h, :w], crowd_masks=t.crowd_masks[:, :h, :w], void=t.void[:h, :w])


class SegmentationEvaluator:
    """PQ, mIoU and AP of one split over one vocabulary, fed batch by batch.

    Args:
        tasks: what to score: "panoptic" (PQ), "semantic" (mIoU), "instance" (AP).
        vocabulary: the evaluated classes (K); the metrics are sized by it.
        labelled: the batches carry panoptic targets; without them (mIoU-only benchmarks) PQ and AP are
            left out, since a label map has no instances.
        device: where the in-loop metric states live.
    """

    def __init__(
        self,
        *,
        tasks: Sequence[str],
        vocabulary: Vocabulary,
        labelled: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        # A plain dict: InstanceAP (COCOeval) is no Module, and none of them holds weights.
        self.metrics: dict[str, Any] = {}
        if "panoptic" in tasks and labelled:
            self.metrics["panoptic"] = PanopticQuality(vocabulary=vocabulary).to(device)
        if "semantic" in tasks:
            self.metrics["semantic"] = SemanticMetric(num_classes=len(vocabulary)).to(device)
        if "instance" in tasks and labelled:
            self.metrics["instance"] = InstanceAP(vocabulary=vocabulary)
        self.vocabulary = vocabulary
        self.tasks = tuple(t for t in tasks if t in self.metrics)
        """The tasks the model must predict for :meth:`update`."""

    def prediction_batch(self, batch: Batch) -> Batch:
        """The batch to predict from: unflipped, sized for the scoring (see the module docstring)."""
        if batch.originals is not None:
            return replace(batch, infos=[replace(i, flipped=False) for i in batch.infos])
        # Predictions are made for an "original" size equal to the resized content.
        infos = [replace(i, orig_size=i.resized_size, flipped=False) for i in batch.infos]
        return replace(batch, infos=infos)

    def update(self, batch: Batch, results: Sequence[ImageResult]) -> None:
        """Score the results the model predicted for :meth:`prediction_batch` of ``batch``.

        Raises:
            ValueError: the batch has no labels at all.
        """
        if batch.targets is None and batch.semantic is None:
            raise ValueError("Evaluation needs labelled batches; the dataloader gives images without labels.")
        targets = self._targets(batch)
        if targets is not None:
            if "panoptic" in self.metrics:
                self.metrics["panoptic"].update([r.panoptic for r in results], targets)
            if "instance" in self.metrics:
                self.metrics["instance"].update([r.instances for r in results], targets)
        if "semantic" in self.metrics:
            for r, truth in zip(results, self._semantic_truths(batch), strict=True):
                assert r.semantic is not None, "the model predicts every task in self.tasks"
                self.metrics["semantic"].update(r.semantic.labels, truth)

    def _targets(self, batch: Batch) -> list[Targets] | None:
        if batch.targets is None:
            return None
        if batch.originals is not None:
            targets = [o.targets for o in batch.originals if o.targets is not None]
            assert len(targets) == len(batch), "EvalTransform keeps the targets of labelled samples"
            return targets
        return [crop_targets(t, i.resized_size) for t, i in zip(batch.targets, batch.infos, strict=True)]

    def _semantic_truths(self, batch: Batch) -> list[Tensor]:
        if batch.originals is not None:
            return [o.semantic_labels() for o in batch.originals]
        # batch.semantic holds the labels of mIoU-only benchmarks; else they follow from the targets.
        truths = []
        for i, info in enumerate(batch.infos):
            h, w = info.resized_size
            if batch.semantic is not None:
                truths.append(batch.semantic[i, :h, :w])
            else:
                assert batch.targets is not None  # update() checked that one of the two is there
                truths.append(batch.targets[i].semantic()[:h, :w])
        return truths

    def compute(self) -> dict[str, float]:
        """The split's numbers in percent: ``pq, sq, rq, pq_th, ..., miou, ap`` (those of its tasks), and
        ``pq_<group>``/``miou_<group>`` for each class group of the vocabulary (the world's ``seen``,
        ``unseen``, ``novel``) that has ground truth (and, for PQ, or predictions)."""
        values: dict[str, float] = {}
        if "panoptic" in self.metrics:
            pq = self.metrics["panoptic"].compute()
            for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
                for name in ("pq", "sq", "rq"):
                    values[f"{name}{suffix}"] = 100.0 * pq[group][name]
            for group, result in pq.get("groups", {}).items():  # e.g. pq_novel on the world's sets
                if result["n"]:
                    values[f"pq_{group}"] = 100.0 * result["pq"]
        if "semantic" in self.metrics:
            semantic = self.metrics["semantic"].compute()
            values["miou"] = 100.0 * semantic["mIoU"]
            groups = self.vocabulary.groups
            for group in dict.fromkeys(groups or ()):
                iou = semantic["IoU"]
                chosen = iou[torch.tensor([g == group for g in groups or ()], device=iou.device)]
                chosen = chosen[~chosen.isnan()]
                if chosen.numel():  # classes of the group with ground truth
                    values[f"miou_{group}"] = 100.0 * chosen.mean().item()
        if "instance" in self.metrics:
            values["ap"] = 100.0 * self.metrics["instance"].compute()["AP"]
        return values

    def reset(self) -> None:
        """Forget every update (the next epoch starts afresh)."""
        for metric in self.metrics.values():
            metric.reset()
