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

from omtseg.io import PanopticRuns
from omtseg.types import Targets

try:  # optional native extension (omtseg/_native/); the numpy path below gives the same counts
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


def _pair_counts(
    gt_map: np.ndarray | PanopticRuns, pred_map: np.ndarray | PanopticRuns
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``gt * OFFSET + pred`` codes present in the image and their pixel counts (intersections).

    Maps are (H, W) integer arrays or :class:`omtseg.io.PanopticRuns`; two runs are merged natively row by
    row, without ever expanding them to pixels. Otherwise numpy counts the runs of the flattened pair codes.
    """
    if isinstance(gt_map, PanopticRuns) and isinstance(pred_map, PanopticRuns) and _pngids is not None:
        counted = None
        if gt_map.height * gt_map.width:
            counted = _pngids.pair_counts_runs(
                (gt_map.row_begin, gt_map.row_end, gt_map.run_end, gt_map.run_id),
                (pred_map.row_begin, pred_map.row_end, pred_map.run_end, pred_map.run_id),
                gt_map.height,
                gt_map.width,
            )
        if counted is not None:  # None: too many segments for the native label grid, or an empty image
            return np.frombuffer(counted[0], np.uint64).astype(np.int64), np.frombuffer(counted[1], np.int64)
    gt_map = gt_map.to_ids() if isinstance(gt_map, PanopticRuns) else gt_map
    pred_map = pred_map.to_ids() if isinstance(pred_map, PanopticRuns) else pred_map
    codes = gt_map.astype(np.int64).ravel() * OFFSET + pred_map.ravel()
    if codes.size == 0:
        return codes, codes
    # Segment maps are piecewise constant: sorting the runs' codes instead of every pixel's is several
    # times faster and gives the same counts.
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    lengths = np.diff(starts, append=codes.size)
    pairs, inverse = np.unique(codes[starts], return_inverse=True)
    return pairs, np.bincount(inverse, weights=lengths, minlength=pairs.size).astype(np.int64)


class ImageBatch:
    """Images' segments and (ground truth, prediction) pixel-pair counts, matched in one vectorised pass.

    :meth:`add` keeps only what matching needs from an image (its segment lists and the intersection of
    every pair of segments, counted from the maps at once), so id-map buffers can be reused between
    calls. :meth:`match` then applies the rules of the module docstring to all images together: with a
    few dozen segments per image, per-image numpy calls would cost more than the counting itself.
    Global segment positions carry the image in their key (``image * OFFSET + id``), so pairs only ever
    meet segments of their own image.

    Args:
        num_classes: K; class positions index ``0..K-1``.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.names: list[str] = []
        self._parts: dict[str, list[np.ndarray]] = {
            key: [] for key in ("gt_ids", "gt_labels", "gt_crowd", "gt_areas", "pred_ids", "pred_labels")
        }
        self._pairs: list[np.ndarray] = []
        self._inter: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.names)

    def add(
        self,
        *,
        gt_map: np.ndarray | PanopticRuns,
        gt_ids: np.ndarray,
        gt_labels: np.ndarray,
        gt_crowd: np.ndarray,
        gt_areas: np.ndarray,
        pred_map: np.ndarray | PanopticRuns,
        pred_ids: np.ndarray,
        pred_labels: np.ndarray,
        name: str = "image",
    ) -> None:
        """Add one image; arguments as :func:`match_segments`, maps may also be :class:`PanopticRuns`.

        Only the maps' size is checked here; the maps are not kept (their buffers may be reused).
        """
        if gt_map.shape != pred_map.shape:
            raise ValueError(
                f"{name}: ground truth is {tuple(gt_map.shape)} but the prediction is "
                f"{tuple(pred_map.shape)}; predict at the ground truth's size."
            )
        pairs, inter = _pair_counts(gt_map, pred_map)
        self.names.append(name)
        self._pairs.append(pairs)
        self._inter.append(inter)
        for key, value, dtype in (
            ("gt_ids", gt_ids, np.int64),
            ("gt_labels", gt_labels, np.int64),
            ("gt_crowd", gt_crowd, bool),
            ("gt_areas", gt_areas, np.int64),
            ("pred_ids", pred_ids, np.int64),
            ("pred_labels", pred_labels, np.int64),
        ):
            self._parts[key].append(np.asarray(value, dtype).reshape(-1))

    def _concat(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """All images' values of ``key`` and the image index of each."""
        parts = self._parts[key]
        images = np.repeat(np.arange(len(parts)), [p.size for p in parts])
        return (np.concatenate(parts) if parts else np.zeros(0)), images

    def _fail(self, image: int, message: str) -> None:
        raise ValueError(f"{self.names[image]}: {message}")

    def _check_ids(self, key: str, what: str) -> np.ndarray:
        """Global keys ``image * OFFSET + id`` of the segments; ids must be in [1, OFFSET) and unique."""
        ids, images = self._concat(key)
        bad = (ids <= 0) | (ids >= OFFSET)
        if bad.any():
            image = int(images[bad.argmax()])
            self._fail(
                image,
                f"{what} segment ids must lie in [1, 256^3) (0 marks void), got "
                f"{self._parts[key][image].tolist()}; renumber the segments.",
            )
        keys = images * OFFSET + ids
        ordered = np.sort(keys)
        repeated = ordered[1:] == ordered[:-1]
        if repeated.any():
            image = int(ordered[1:][repeated][0] // OFFSET)
            self._fail(
                image,
                f"{what} segment ids repeat ({self._parts[key][image].tolist()}); "
                "give each segment its own id.",
            )
        return keys

    def _check_labels(self, key: str, what: str) -> np.ndarray:
        """All images' class positions of ``key``; they must lie in [0, K)."""
        labels, images = self._concat(key)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            image = int(images[bad.argmax()])
            self._fail(
                image,
                f"{what} class positions {self._parts[key][image].tolist()} fall outside "
                f"[0, {self.num_classes}); use categories the ground truth defines.",
            )
        return labels.astype(np.int64)

    def match(self) -> PQStats:
        """Per-class PQ sums over every added image.

        Raises:
            ValueError: naming the first offending image: a predicted id is in the map but not listed, or
                listed but absent from the map; a class position is out of range; ids repeat or are out of
                range.
        """
        k = self.num_classes
        stats = PQStats.zeros(k)
        if not self.names:
            return stats
        gt_keys = self._check_ids("gt_ids", "ground-truth")
        pred_keys = self._check_ids("pred_ids", "predicted")
        gt_labels = self._check_labels("gt_labels", "ground-truth")
        pred_labels = self._check_labels("pred_labels", "predicted")
        gt_crowd = self._concat("gt_crowd")[0].astype(bool)
        gt_areas = self._concat("gt_areas")[0].astype(np.int64)

        pair_images = np.repeat(np.arange(len(self._pairs)), [p.size for p in self._pairs])
        pairs, inter = np.concatenate(self._pairs), np.concatenate(self._inter)
        pair_gt, pair_pred = pairs // OFFSET, pairs % OFFSET
        gi = _positions(pair_images * OFFSET + pair_gt, gt_keys)
        pi = _positions(pair_images * OFFSET + pair_pred, pred_keys)

        unlisted = (pi < 0) & (pair_pred != 0)
        if unlisted.any():
            image = int(pair_images[unlisted.argmax()])
            ids = np.unique(pair_pred[unlisted & (pair_images == image)])
            self._fail(
                image,
                f"predicted segment ids {ids.tolist()} are in the PNG/id map but not in segments_info; "
                "list every segment of the map.",
            )
        num_pred = pred_keys.size
        listed = pi >= 0
        pred_area = np.bincount(pi[listed], weights=inter[listed], minlength=num_pred).astype(np.int64)
        if (pred_area == 0).any():
            image = int(pred_keys[pred_area.argmin()] // OFFSET)
            empty = (pred_area == 0) & (pred_keys // OFFSET == image)
            self._fail(
                image,
                f"predicted segment ids {(pred_keys[empty] % OFFSET).tolist()} are in segments_info but not "
                "in the PNG/id map; drop empty segments.",
            )
        on_void = (pair_gt == 0) & listed
        pred_void = np.bincount(pi[on_void], weights=inter[on_void], minlength=num_pred).astype(np.int64)

        both = (gi >= 0) & listed
        g, p, both_inter = gi[both], pi[both], inter[both]
        candidate = ~gt_crowd[g] & (gt_labels[g] == pred_labels[p])
        union = pred_area[p] + gt_areas[g] - both_inter - pred_void[p]
        iou = both_inter / np.where(candidate, union, 1)
        matched = candidate & (iou > 0.5)
        matched_labels = gt_labels[g[matched]]
        stats.tp += np.bincount(matched_labels, minlength=k)
        stats.iou += np.bincount(matched_labels, weights=iou[matched], minlength=k)

        gt_matched = np.zeros(gt_keys.size, dtype=bool)
        gt_matched[g[matched]] = True
        pred_matched = np.zeros(num_pred, dtype=bool)
        pred_matched[p[matched]] = True
        stats.fn += np.bincount(gt_labels[~gt_matched & ~gt_crowd], minlength=k)

        # Of each image's crowd segments of one class, the last in annotation order is the one that excuses.
        crowd = np.flatnonzero(gt_crowd)
        group = (gt_keys[crowd] // OFFSET) * k + gt_labels[crowd]
        order = np.lexsort((crowd, group))
        last = np.ones(crowd.size, dtype=bool)
        last[:-1] = group[order][1:] != group[order][:-1]
        excuses = np.zeros(gt_keys.size, dtype=bool)
        excuses[crowd[order][last]] = True
        on_crowd = excuses[g] & (gt_labels[g] == pred_labels[p])
        pred_crowd = np.bincount(p[on_crowd], weights=both_inter[on_crowd], minlength=num_pred)
        ignored = (pred_void + pred_crowd) / np.maximum(pred_area, 1) > 0.5
        stats.fp += np.bincount(pred_labels[~pred_matched & ~ignored], minlength=k)
        return stats


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
    """Match the segments of one image and count its per-class PQ sums (an :class:`ImageBatch` of one).

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
    batch = ImageBatch(num_classes)
    batch.add(
        gt_map=gt_map,
        gt_ids=gt_ids,
        gt_labels=gt_labels,
        gt_crowd=gt_crowd,
        gt_areas=gt_areas,
        pred_map=pred_map,
        pred_ids=pred_ids,
        pred_labels=pred_labels,
        name=name,
    )
    return batch.match()


def summarize(
    stats: PQStats,
    *,
    is_thing: Sequence[bool],
    keys: Sequence[Any] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """PQ, SQ, RQ over all classes, things and stuff, in panopticapi's result layout.

    Args:
        stats: dataset sums over K classes.
        is_thing: (K,) True for thing classes.
        keys: (K,) the ``per_class`` keys (category ids); defaults to the positions ``0..K-1``.
        groups: (K,) an evaluation group per class (``seen``, ``novel`` ...): each group is averaged like
            Things and Stuff, under ``results["groups"][name]``.

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

    if groups is not None and len(groups) != num_classes:
        raise ValueError(f"summarize got {num_classes} classes but {len(groups)} groups.")

    def average(chosen: list[tuple[float, float, float]]) -> dict[str, Any]:
        n = len(chosen)
        sums = [sum(v[i] for v in chosen) for i in range(3)]
        return {
            "pq": sums[0] / n if n else 0.0,
            "sq": sums[1] / n if n else 0.0,
            "rq": sums[2] / n if n else 0.0,
            "n": n,
        }

    results: dict[str, Any] = {}
    for group, wanted in (("All", None), ("Things", True), ("Stuff", False)):
        results[group] = average(
            [
                v
                for v, thing in zip(values, is_thing, strict=True)
                if v is not None and (wanted is None or bool(thing) == wanted)
            ]
        )
    if groups is not None:
        results["groups"] = {
            name: average([v for v, g in zip(values, groups, strict=True) if v is not None and g == name])
            for name in dict.fromkeys(groups)
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
