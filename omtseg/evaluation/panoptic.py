"""Panoptic quality two ways: ``pq_compute`` on COCO-panoptic files and the ``PanopticQuality`` metric.

``pq_compute`` has the signature, defaults and result layout of the COCO panoptic API's
``panopticapi.evaluation.pq_compute``; the malformed predictions it rejects raise ``ValueError`` (panopticapi
raises ``KeyError``/``Exception``) and missing files ``FileNotFoundError``. PNGs are decoded to runs by the
native extension (see :func:`omtseg.io.read_panoptic_runs`) in a pool of threads. ``PanopticQuality`` is a
torchmetrics ``Metric`` over in-memory results with the same numbers; both share
:class:`omtseg.evaluation.pq.ImageBatch`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from omtseg.evaluation.pq import ImageBatch, PQStats, paint_targets, summarize
from omtseg.io import load_json, read_panoptic_runs
from omtseg.types import PanopticResult, Targets, Vocabulary

_IMAGES_PER_WORKER = 16

# (gt annotation, pred annotation) pairs with what a worker needs to read and score them.
_Job = tuple[dict[str, Any], dict[str, Any]]


def _default_folder(json_file: str | os.PathLike[str]) -> Path:
    path = str(json_file)
    return Path(path[: -len(".json")] if path.endswith(".json") else path)


def _segments(ann: dict[str, Any], category_index: dict[int, int], what: str) -> tuple[np.ndarray, ...]:
    info = ann.get("segments_info")
    if not isinstance(info, list):
        raise ValueError(
            f"The {what} annotation of image {ann.get('image_id')!r} has no `segments_info` list; "
            "write annotations in COCO panoptic format."
        )
    try:
        rows = [
            (s["id"], category_index[s["category_id"]], s.get("iscrowd", 0), s.get("area", 0)) for s in info
        ]
    except KeyError:
        unknown = sorted({s.get("category_id") for s in info} - category_index.keys(), key=str)
        if unknown:
            raise ValueError(
                f"In image {ann.get('image_id')!r} {what} segments have unknown category_id {unknown}; use "
                "the category ids of the ground-truth JSON's `categories`."
            ) from None
        raise ValueError(
            f"In image {ann.get('image_id')!r} a {what} segment has no `id`; give every segment of "
            "`segments_info` an `id` and a `category_id`."
        ) from None
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return table[:, 0], table[:, 1], table[:, 2].astype(bool), table[:, 3]


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: scoring allocates many short-lived acyclic objects, and
    collections triggered by them took ~3% of the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _score_images(
    jobs: list[_Job], gt_folder: Path, pred_folder: Path, category_index: dict[int, int]
) -> PQStats:
    batch = ImageBatch(len(category_index))
    # Decode into the same two run buffers image after image: fresh megabyte arrays cost page faults
    # that, on virtual machines, take longer than the decoding. The batch keeps only pair counts.
    gt_buffer = pred_buffer = None
    for gt_ann, pred_ann in jobs:
        gt_ids, gt_labels, gt_crowd, gt_areas = _segments(gt_ann, category_index, "ground-truth")
        pred_ids, pred_labels, _, _ = _segments(pred_ann, category_index, "predicted")
        gt_buffer = read_panoptic_runs(os.path.join(gt_folder, gt_ann["file_name"]), gt_buffer)
        pred_buffer = read_panoptic_runs(os.path.join(pred_folder, pred_ann["file_name"]), pred_buffer)
        batch.add(
            gt_map=gt_buffer,
            gt_ids=gt_ids,
            gt_labels=gt_labels,
            gt_crowd=gt_crowd,
            gt_areas=gt_areas,
            pred_map=pred_buffer,
            pred_ids=pred_ids,
            pred_labels=pred_labels,
            name=f"Image {gt_ann['image_id']!r}",
        )
    return batch.match()


def pq_compute(
    gt_json_file: str | os.PathLike[str],
    pred_json_file: str | os.PathLike[str],
    gt_folder: str | os.PathLike[str] | None = None,
    pred_folder: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Panoptic quality of COCO-panoptic predictions, as the COCO panoptic API computes it.

    Args:
        gt_json_file: ground-truth JSON with ``annotations`` and ``categories`` (with ``isthing``).
        pred_json_file: prediction JSON with ``annotations`` (``image_id``, ``file_name``, ``segments_info``).
        gt_folder: folder of ground-truth PNGs; defaults to ``gt_json_file`` without ``.json``.
        pred_folder: folder of predicted PNGs; defaults to ``pred_json_file`` without ``.json``.
        workers: threads; defaults to the CPU count (one per 16 images at most); 1 scores in the calling
            thread.

    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {category_id: {"pq",
        "sq", "rq"}}}`` with fractions in [0, 1], see :func:`omtseg.evaluation.pq.summarize`.

    Raises:
        FileNotFoundError: a JSON file, a folder or a PNG is missing.
        ValueError: an image has no prediction, or a prediction is malformed (segment in the PNG and not in
            the JSON or the reverse, unknown category id, size differing from the ground truth).
    """
    gt_json = load_json(gt_json_file, "Ground-truth panoptic JSON")
    pred_json = load_json(pred_json_file, "Predicted panoptic JSON")
    folders = []
    for folder, json_file, what in (
        (gt_folder, gt_json_file, "ground-truth"),
        (pred_folder, pred_json_file, "predicted"),
    ):
        path = _default_folder(json_file) if folder is None else Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Folder {path} with {what} segmentation PNGs does not exist; pass its path (the default is "
                "the JSON path without `.json`)."
            )
        folders.append(path)
    for key, data, name in (
        ("categories", gt_json, gt_json_file),
        ("annotations", gt_json, gt_json_file),
        ("annotations", pred_json, pred_json_file),
    ):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{name} has no `{key}` list; it is not a COCO panoptic JSON.")

    categories = gt_json["categories"]
    category_index = {int(c["id"]): k for k, c in enumerate(categories)}
    predictions = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    missing = [ann["image_id"] for ann in gt_json["annotations"] if ann["image_id"] not in predictions]
    if missing:
        raise ValueError(
            f"{pred_json_file} has no prediction for {len(missing)} ground-truth images "
            f"(ids {missing[:10]}); predict every image of the ground truth."
        )
    jobs: list[_Job] = [(ann, predictions[ann["image_id"]]) for ann in gt_json["annotations"]]

    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(jobs) // _IMAGES_PER_WORKER))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    stats = PQStats.zeros(len(categories))
    with _no_gc():
        if workers == 1 or len(jobs) <= 1:
            stats += _score_images(jobs, folders[0], folders[1], category_index)
        else:
            # Threads, not processes: decoding and pair counting run in C with the GIL released, and
            # threads need no fork and no pickling. A few chunks per thread balance uneven images.
            chunks = [c for c in (jobs[i :: workers * 4] for i in range(workers * 4)) if c]
            with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                for chunk_stats in pool.map(
                    lambda chunk: _score_images(chunk, folders[0], folders[1], category_index), chunks
                ):
                    stats += chunk_stats
    return summarize(
        stats,
        is_thing=[c.get("isthing", 0) == 1 for c in categories],
        keys=[int(c["id"]) for c in categories],
    )


class PanopticQuality(Metric):
    """Panoptic quality accumulated over in-memory results, synchronised across processes.

    States are the per-class sums ``iou`` (float64) and ``tp``, ``fp``, ``fn`` (int64), shape (K,), on the
    metric's device and summed across processes. Matching runs on CPU (one id-map copy per image), where
    numpy's sort is fastest. ``compute`` returns the layout of :func:`pq_compute` with ``per_class`` keyed
    by the vocabulary's ``category_ids``; exporting the same results with
    :mod:`omtseg.evaluation.export` and running :func:`pq_compute` on them gives the same numbers.

    Args:
        vocabulary: the K classes that labels index; ``is_thing`` splits Things/Stuff.
        **kwargs: torchmetrics ``Metric`` options (``dist_sync_on_step``, ``process_group`` ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor

    def __init__(self, *, vocabulary: Vocabulary, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary
        k = len(vocabulary)
        self.add_state("iou", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Sequence[PanopticResult], targets: Sequence[Targets]) -> None:
        """Add images.

        Args:
            preds: per image, the panoptic result; its ``id_map`` (H, W) matches the targets' size.
            targets: per image, the ground truth with labels indexing the vocabulary.
        """
        if len(preds) != len(targets):
            raise ValueError(
                f"PanopticQuality.update got {len(preds)} predictions for {len(targets)} targets; "
                "pass one per image."
            )
        batch = ImageBatch(len(self.vocabulary))
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            gt_map, gt_ids, gt_labels, gt_crowd = paint_targets(target)
            gt_map_np = gt_map.cpu().numpy()
            gt_areas = np.bincount(gt_map_np.ravel(), minlength=gt_ids.size + 1)[1:]
            batch.add(
                gt_map=gt_map_np,
                gt_ids=gt_ids,
                gt_labels=gt_labels,
                gt_crowd=gt_crowd,
                gt_areas=gt_areas,
                pred_map=pred.id_map.cpu().numpy().astype(np.int64),
                pred_ids=np.array([s.id for s in pred.segments], dtype=np.int64),
                pred_labels=np.array([s.label for s in pred.segments], dtype=np.int64),
                name=f"Image {i} of the batch",
            )
        stats = batch.match()
        self.iou += torch.from_numpy(stats.iou).to(self.iou.device)
        self.tp += torch.from_numpy(stats.tp).to(self.tp.device)
        self.fp += torch.from_numpy(stats.fp).to(self.fp.device)
        self.fn += torch.from_numpy(stats.fn).to(self.fn.device)

    def compute(self) -> dict[str, Any]:
        """PQ/SQ/RQ for All, Things and Stuff plus ``per_class``, as :func:`pq_compute` returns them."""
        stats = PQStats(*(t.cpu().numpy() for t in (self.iou, self.tp, self.fp, self.fn)))
        return summarize(
            stats,
            is_thing=self.vocabulary.is_thing,
            keys=self.vocabulary.category_ids,
            groups=self.vocabulary.groups,
        )
