"""Instance segmentation AP (COCO ``segm``) of thing classes, through pycocotools on RLE masks.

Masks are run-length encoded as they arrive, so a whole validation set fits in memory; ``compute`` builds
the COCO ground-truth and detection sets and runs ``COCOeval`` (max 100 detections per image). Stuff
classes are left out on both sides; crowd thing segments enter as ``iscrowd`` ground truth, which COCO
never counts as missed and lets absorb detections. In multi-process runs (an initialised
``torch.distributed`` group), ``compute`` first gathers every process's encoded images, so each process
reports the AP of the whole split, as the torchmetrics metrics of the other tasks do.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from omtseg.types import InstanceResult, Targets, Vocabulary

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _encode(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(M, H, W) bool -> M COCO RLEs."""
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))  # (H, W, M)
    return mask_utils.encode(array)


class InstanceAP:
    """COCO mask AP of the vocabulary's thing classes over the images given to :meth:`update`.

    Args:
        vocabulary: the classes that labels index; only ``is_thing`` classes are scored.
    """

    def __init__(self, *, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.reset()

    def reset(self) -> None:
        """Forget every image."""
        self._images: list[dict[str, int]] = []
        self._gt: list[dict[str, Any]] = []
        self._dt: list[dict[str, Any]] = []

    def update(self, preds: Sequence[InstanceResult], targets: Sequence[Targets]) -> None:
        """Add images.

        Args:
            preds: per image, masks (M, H, W) at the targets' size, labels (M,), scores (M,).
            targets: per image, the ground truth (labels index the vocabulary).
        """
        if len(preds) != len(targets):
            raise ValueError(
                f"InstanceAP.update got {len(preds)} predictions for {len(targets)} targets; "
                "pass one per image."
            )
        for pred, target in zip(preds, targets, strict=True):
            height, width = target.void.shape
            if pred.masks.shape[1:] != (height, width):
                raise ValueError(
                    f"Instance masks are {tuple(pred.masks.shape[1:])} but the ground truth is "
                    f"{(height, width)}; predict at the ground truth's size."
                )
            labels = pred.labels.cpu()
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.vocabulary)):
                raise ValueError(
                    f"Instance labels {labels.tolist()} fall outside the vocabulary of "
                    f"{len(self.vocabulary)} classes."
                )
            image_id = len(self._images) + 1
            self._images.append({"id": image_id, "height": height, "width": width})
            crowd = target.crowd_labels
            self._add(self._gt, image_id, target.masks, target.labels, iscrowd=[0] * len(target.labels))
            self._add(self._gt, image_id, target.crowd_masks, crowd, iscrowd=[1] * len(crowd))
            self._add(self._dt, image_id, pred.masks, pred.labels, score=pred.scores.cpu().tolist())

    def _add(
        self,
        annotations: list[dict[str, Any]],
        image_id: int,
        masks: torch.Tensor,
        labels: torch.Tensor,
        **per_mask: list[Any],
    ) -> None:
        """Append the thing-class masks (M, H, W) as RLE annotations with their per-mask fields."""
        keep = [k for k, label in enumerate(labels.tolist()) if self.vocabulary.is_thing[label]]
        rles = _encode(masks[torch.tensor(keep, dtype=torch.long, device=masks.device)])
        for rle, k in zip(rles, keep, strict=True):
            extra = {name: values[k] for name, values in per_mask.items()}
            annotations.append(
                {"image_id": image_id, "category_id": int(labels[k]), "segmentation": rle, **extra}
            )

    def _coco(self, images: list[dict[str, int]], annotations: list[dict[str, Any]]) -> COCO:
        for i, ann in enumerate(annotations, start=1):
            ann["id"] = i
            ann["area"] = float(mask_utils.area(ann["segmentation"]))
            ann["bbox"] = mask_utils.toBbox(ann["segmentation"]).tolist()
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k} for k, thing in enumerate(self.vocabulary.is_thing) if thing],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _gathered(self) -> tuple[list[dict[str, int]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Images, ground truth and detections of every process (image ids renumbered), or this one's."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._images, self._gt, self._dt
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._images, self._gt, self._dt))
        images: list[dict[str, int]] = []
        gt: list[dict[str, Any]] = []
        dt: list[dict[str, Any]] = []
        for part_images, part_gt, part_dt in parts:
            offset = len(images)
            images += [{**image, "id": image["id"] + offset} for image in part_images]
            gt += [{**ann, "image_id": ann["image_id"] + offset} for ann in part_gt]
            dt += [{**ann, "image_id": ann["image_id"] + offset} for ann in part_dt]
        return images, gt, dt

    def compute(self) -> dict[str, float]:
        """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions in [0, 1]; NaN where COCO has no
        ground truth to score (no thing segment at all, or none in an area range). Over all processes'
        images when ``torch.distributed`` is initialised (a collective call: every process must call it)."""
        images, gt, dt = self._gathered()
        if not images:
            return dict.fromkeys(METRIC_NAMES, float("nan"))
        evaluator = COCOeval(self._coco(images, gt), self._coco(images, dt), iouType="segm")
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # stats holds 12 numbers (AP then AR); COCO marks "nothing to score" with -1.
        ap = evaluator.stats[: len(METRIC_NAMES)]
        return {name: float(v) if v >= 0 else float("nan") for name, v in zip(METRIC_NAMES, ap, strict=True)}
