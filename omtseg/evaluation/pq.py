"""Panoptic quality (PQ) core: one image's segment matching and the dataset summary.

Both PQ paths use these functions: :func:`omtseg.evaluation.panoptic.pq_compute` on COCO-panoptic files and
:class:`omtseg.evaluation.panoptic.PanopticQuality` on in-memory results. The rules are those of the COCO
panoptic API (``panopticapi/evaluation.py``):

- a ground-truth and a predicted segment of the same class match when their IoU is > 0.5, where the union
  leaves out the predicted pixels that fall on void (ground-truth id 0);
- crowd ground-truth segments are never matched and never missed;
- an unmatched predicted segment is not a false positive when more than half of it lies on void plus the
  crowd region of its own class (the image's last crowd segment of that class, as panopticapi keeps);
- per-class PQ, SQ, RQ are averaged over the classes that have any ground truth or prediction.

Shape letters: K classes, S ground-truth segments, P predicted segments, H, W pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omtseg.types import Targets

try:  # optional native extension (omtseg/_pngids.c); the numpy path below gives the same counts
    from omtseg import _pngids
except ImportError:  # pragma: no cover - depends on the install
    _pngids = None  # type: ignore[assignment]

OFFSET = 256**3
"""Segment ids lie in [0, 256^3) (three PNG channels), so ``gt * OFFSET + pred`` encodes a pixel's pair."""


@dataclass
class PQStats:
    """Per-class sums over images, indexed by class position ``0..K-1``.

    Attributes:
        iou: (K,) float64 sum of the IoUs of matched pairs.
        tp: (K,) int64 matched pairs.
        fp: (K,) int64 unmatched predicted segments that count.
        fn: (K,) int64 unmatched non-crowd ground-truth segments.
    """

    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> PQStats:
        """Empty sums for ``num_classes`` classes."""
        return cls(
            iou=np.zeros(num_classes, dtype=np.float64),
            tp=np.zeros(num_classes, dtype=np.int64),
            fp=np.zeros(num_classes, dtype=np.int64),
            fn=np.zeros(num_classes, dtype=np.int64),
        )

    def __iadd__(self, other: PQStats) -> PQStats:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


def _positions(pixel_ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Index into ``segment_ids`` of each value of ``pixel_ids``, -1 where it is not listed."""
    if segment_ids.size == 0:
        return np.full(pixel_ids.shape, -1, dtype=np.int64)
    order = np.argsort(segment_ids, kind="stable")
    sorted_ids = segment_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, pixel_ids), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == pixel_ids, order[pos], -1)


def _pair_counts(gt_map: np.ndarray, pred_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``gt * OFFSET + pred`` codes present in the image and their pixel counts (intersections)."""
    if _pngids is not None and gt_map.dtype == pred_map.dtype == np.uint32:
        # uint32 maps (from omtseg.io.read_panoptic_ids) are counted natively in one pass, ids < 2^24
        # checked there; the result equals the numpy path's.
        codes_bytes, counts_bytes = _pngids.pair_counts(
            np.ascontiguousarray(gt_map), np.ascontiguousarray(pred_map), max(gt_map.shape[-1], 1)
        )
        return np.frombuffer(codes_bytes, np.uint64).astype(np.int64), np.frombuffer(counts_bytes, np.int64)
    codes = gt_map.astype(np.int64).ravel() * OFFSET + pred_map.ravel()
    if codes.size == 0:
        return codes, codes
    # Segment maps are piecewise constant: sorting the runs' codes instead of every pixel's is several
    # times faster and gives the same counts.
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    lengths = np.diff(starts, append=codes.size)
    pairs, inverse = np.unique(codes[starts], return_inverse=True)
    return pairs, np.bincount(inverse, weights=lengths, minlength=pairs.size).astype(np.int64)


def _check_segment_ids(ids: np.ndarray, what: str, name: str) -> None:
    if ids.size and (ids.min() <= 0 or ids.max() >= OFFSET):
        raise ValueError(
            f"{name}: {what} segment ids must lie in [1, 256^3) (0 marks void), got {ids.tolist()}; "
            "renumber the segments."
        )
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{name}: {what} segment ids repeat ({ids.tolist()}); give each segment its own id.")


def match_segments(
    *,
    gt_map: np.ndarray,
    gt_ids: np.ndarray,
    gt_labels: np.ndarray,
    gt_crowd: np.ndarray,
    gt_areas: np.ndarray,
    pred_map: np.ndarray,
    pred_ids: np.ndarray,
    pred_labels: np.ndarray,
    num_classes: int,
    name: str = "image",
) -> PQStats:
    """Match the segments of one image and count its per-class PQ sums.

    Args:
        gt_map: (H, W) integer ground-truth segment ids, 0 at void.
        gt_ids: (S,) ids of the ground-truth segments, in annotation order (order decides which crowd
            segment of a class counts, as in panopticapi).
        gt_labels: (S,) class positions in ``[0, K)``.
        gt_crowd: (S,) bool, True for ``iscrowd`` segments.
        gt_areas: (S,) areas used in the IoU union; panopticapi takes them from the annotation file.
        pred_map: (H, W) integer predicted segment ids, 0 where nothing is predicted.
        pred_ids: (P,) ids of the predicted segments.
        pred_labels: (P,) class positions in ``[0, K)``.
        num_classes: K.
        name: how error messages name the image.

    Returns:
        The image's per-class sums.

    Raises:
        ValueError: the maps differ in size; a predicted id is in the map but not listed, or listed but
            absent from the map; a class position is out of range; ids repeat or are out of range.
    """
    if gt_map.shape != pred_map.shape:
        raise ValueError(
            f"{name}: ground truth is {tuple(gt_map.shape)} but the prediction is {tuple(pred_map.shape)}; "
            "predict at the ground truth's size."
        )
    gt_ids, gt_labels = np.asarray(gt_ids, np.int64), np.asarray(gt_labels, np.int64)
    pred_ids, pred_labels = np.asarray(pred_ids, np.int64), np.asarray(pred_labels, np.int64)
    gt_crowd, gt_areas = np.asarray(gt_crowd, bool), np.asarray(gt_areas, np.int64)
    _check_segment_ids(gt_ids, "ground-truth", name)
    _check_segment_ids(pred_ids, "predicted", name)
    for what, labels in (("ground-truth", gt_labels), ("predicted", pred_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name}: {what} class positions {labels.tolist()} fall outside [0, {num_classes}); "
                "use categories the ground truth defines."
            )

    pairs, inter = _pair_counts(gt_map, pred_map)
    pair_gt, pair_pred = pairs // OFFSET, pairs % OFFSET
    gi, pi = _positions(pair_gt, gt_ids), _positions(pair_pred, pred_ids)

    unlisted = np.unique(pair_pred[(pi < 0) & (pair_pred != 0)])
    if unlisted.size:
        raise ValueError(
            f"{name}: predicted segment ids {unlisted.tolist()} are in the PNG/id map but not in "
            "segments_info; list every segment of the map."
        )
    num_pred = pred_ids.size
    pred_area = np.bincount(pi[pi >= 0], weights=inter[pi >= 0], minlength=num_pred).astype(np.int64)
    if (pred_area == 0).any():
        raise ValueError(
            f"{name}: predicted segment ids {pred_ids[pred_area == 0].tolist()} are in segments_info but "
            "not in the PNG/id map; drop empty segments."
        )
    on_void = (pair_gt == 0) & (pi >= 0)
    pred_void = np.bincount(pi[on_void], weights=inter[on_void], minlength=num_pred).astype(np.int64)

    stats = PQStats.zeros(num_classes)
    both = (gi >= 0) & (pi >= 0)
    g, p, both_inter = gi[both], pi[both], inter[both]
    candidate = ~gt_crowd[g] & (gt_labels[g] == pred_labels[p])
    union = pred_area[p] + gt_areas[g] - both_inter - pred_void[p]
    iou = both_inter / np.where(candidate, union, 1)
    matched = candidate & (iou > 0.5)
    matched_labels = gt_labels[g[matched]]
    stats.tp += np.bincount(matched_labels, minlength=num_classes)
    stats.iou += np.bincount(matched_labels, weights=iou[matched], minlength=num_classes)

    gt_matched = np.zeros(gt_ids.size, dtype=bool)
    gt_matched[g[matched]] = True
    pred_matched = np.zeros(num_pred, dtype=bool)
    pred_matched[p[matched]] = True
    stats.fn += np.bincount(gt_labels[~gt_matched & ~gt_crowd], minlength=num_classes)

    # The last crowd segment of each class in annotation order (maximum position) is the one that excuses.
    crowd_of_class = np.full(num_classes, -1, dtype=np.int64)
    crowd_positions = np.flatnonzero(gt_crowd)
    np.maximum.at(crowd_of_class, gt_labels[crowd_positions], crowd_positions)
    on_crowd = crowd_of_class[pred_labels[p]] == g
    pred_crowd = np.bincount(p[on_crowd], weights=both_inter[on_crowd], minlength=num_pred)
    ignored = (pred_void + pred_crowd) / pred_area > 0.5
    stats.fp += np.bincount(pred_labels[~pred_matched & ~ignored], minlength=num_classes)
    return stats


def summarize(
    stats: PQStats, *, is_thing: Sequence[bool], keys: Sequence[Any] | None = None
) -> dict[str, Any]:
    """PQ, SQ, RQ over all classes, things and stuff, in panopticapi's result layout.

    Args:
        stats: dataset sums over K classes.
        is_thing: (K,) True for thing classes.
        keys: (K,) the ``per_class`` keys (category ids); defaults to the positions ``0..K-1``.

    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {key: {"pq", "sq",
        "rq"}}}``; values are fractions in [0, 1]. ``n`` counts the classes with any ground truth or
        prediction; a group with ``n == 0`` reports 0.0 (panopticapi would divide by zero). Classes without
        either report 0.0 in ``per_class`` and stay out of the averages.
    """
    num_classes = stats.tp.size
    keys = list(range(num_classes)) if keys is None else list(keys)
    if len(keys) != num_classes or len(is_thing) != num_classes:
        raise ValueError(
            f"summarize got {num_classes} classes of statistics but {len(keys)} keys and "
            f"{len(is_thing)} is_thing flags; pass one per class."
        )
    per_class: dict[Any, dict[str, float]] = {}
    values: list[tuple[float, float, float] | None] = []
    for k in range(num_classes):
        iou, tp, fp, fn = float(stats.iou[k]), int(stats.tp[k]), int(stats.fp[k]), int(stats.fn[k])
        if tp + fp + fn == 0:
            per_class[keys[k]] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            values.append(None)
            continue
        denominator = tp + 0.5 * fp + 0.5 * fn
        pq, sq, rq = iou / denominator, (iou / tp if tp else 0.0), tp / denominator
        per_class[keys[k]] = {"pq": pq, "sq": sq, "rq": rq}
        values.append((pq, sq, rq))

    results: dict[str, Any] = {}
    for group, wanted in (("All", None), ("Things", True), ("Stuff", False)):
        chosen = [
            v
            for v, thing in zip(values, is_thing, strict=True)
            if v is not None and (wanted is None or bool(thing) == wanted)
        ]
        n = len(chosen)
        sums = [sum(v[i] for v in chosen) for i in range(3)]
        results[group] = {
            "pq": sums[0] / n if n else 0.0,
            "sq": sums[1] / n if n else 0.0,
            "rq": sums[2] / n if n else 0.0,
            "n": n,
        }
    results["per_class"] = per_class
    return results


def paint_targets(
    targets: Targets, segment_ids: Sequence[int] | None = None
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """A ground-truth id map from :class:`Targets`: segments first, then crowd segments, void last.

    Args:
        targets: N segments and M crowd segments at (H, W).
        segment_ids: (N + M,) ids to paint; defaults to ``1..N+M``.

    Returns:
        ``(id_map, ids, labels, crowd)``: (H, W) int64 id map on the targets' device (0 at void), and
        (N + M,) numpy ids, class positions and crowd flags.
    """
    num = targets.masks.shape[0] + targets.crowd_masks.shape[0]
    ids = np.arange(1, num + 1, dtype=np.int64) if segment_ids is None else np.asarray(segment_ids, np.int64)
    if ids.shape != (num,):
        raise ValueError(f"paint_targets needs {num} segment ids (segments, then crowd), got {ids.tolist()}.")
    masks = torch.cat([targets.masks, targets.crowd_masks]).bool()
    id_map = torch.zeros(targets.void.shape, dtype=torch.int64, device=targets.void.device)
    for segment_id, mask in zip(ids.tolist(), masks, strict=True):
        id_map.masked_fill_(mask, segment_id)
    id_map.masked_fill_(targets.void.bool(), 0)
    labels = torch.cat([targets.labels, targets.crowd_labels]).cpu().numpy().astype(np.int64)
    crowd = np.arange(num) >= targets.masks.shape[0]
    return id_map, ids, labels, crowd
