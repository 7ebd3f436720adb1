"""Choosing the seen-class penalty (calibrated stacking) on validation images that hold untrained classes.

A head trained on seen classes only scores them higher than any name it never learned, even where the image
shows the other: the open-vocabulary world's unseen compositions are named as the seen class with one word in
common. Calibrated stacking (Chao et al., "An empirical study and analysis of generalized zero-shot learning
for object recognition in the wild", ECCV 2016) subtracts one constant, ``seen_class_penalty``, from every
seen class's logit at inference (:class:`~omtseg.modeling.segmenter.OMTSeg`). The constant is chosen, as
there, on validation data: the value with the best harmonic mean of seen and unseen PQ, the generalized
zero-shot criterion, so that neither group is bought with the other.

Run: ``omtseg calibrate --config configs/world.yaml --ckpt_path best.ckpt`` (the world's ``unseen_val``
split), then test with ``--model.model.init_args.seen_class_penalty <value>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from omtseg.evaluation.protocol import SegmentationEvaluator
from omtseg.types import Batch, ImageResult

DEFAULT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Penalties tried (logit units; the heads' class logits are cosine similarities over a temperature)."""


class Calibratable(Protocol):
    """What the sweep needs of a segmenter (:class:`~omtseg.modeling.segmenter.OMTSeg`; evaluation does not
    import modeling)."""

    trained_names: frozenset[str]
    training: bool

    def predict(
        self, batch: Batch, tasks: Sequence[str] = ..., *, seen_class_penalty: float | None = None
    ) -> list[ImageResult]: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b), 0 when both are 0."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@dataclass(frozen=True)
class CalibrationSweep:
    """What each penalty gave on the validation images, and the one chosen.

    Attributes:
        rows: per penalty tried, ``{"penalty", "pq", "pq_seen", "pq_unseen", "harmonic"}`` (percent).
        best: the chosen penalty: the best harmonic mean of seen and unseen PQ, the smallest on ties.
        unseen_group: the class group counted as unseen.
    """

    rows: tuple[dict[str, float], ...]
    best: float
    unseen_group: str

    def table(self) -> str:
        """The sweep as a Markdown table, the chosen row marked."""
        lines = [
            f"| seen_class_penalty | PQ | PQ seen | PQ {self.unseen_group} | harmonic mean |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            mark = " (chosen)" if r["penalty"] == self.best else ""
            lines.append(
                f"| {r['penalty']:g}{mark} | {r['pq']:.1f} | {r['pq_seen']:.1f} | {r['pq_unseen']:.1f} "
                f"| {r['harmonic']:.1f} |"
            )
        return "\n".join(lines)


@torch.no_grad()
def sweep_seen_penalty(
    model: Calibratable,
    batches: Iterable[Batch],
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    unseen_group: str = "unseen",
) -> CalibrationSweep:
    """Panoptic PQ of ``model`` on labelled ``batches`` at each penalty of ``grid``; the best by the
    harmonic mean of the ``seen`` and ``unseen_group`` PQ.

    Args:
        model: a trained segmenter whose ``trained_names`` are known (kept in every checkpoint ``omtseg fit``
            writes; :meth:`OMTSeg.note_trained` for older ones).
        batches: validation batches whose vocabulary has ``groups`` (``seen`` and ``unseen_group``).
        grid: penalties to try (>= 0).
        unseen_group: the group of untrained classes the penalty is chosen for.

    Raises:
        ValueError: an empty grid or no batches, a negative penalty, a vocabulary without groups or
            without both groups in its ground truth, or a model that knows no training names.
    """
    grid = sorted(set(float(g) for g in grid))
    if not grid or grid[0] < 0:
        raise ValueError(f"The penalty grid must be non-empty and >= 0, got {grid}.")
    if not model.trained_names:
        raise ValueError(
            "The model knows no training class names (a checkpoint written before omtseg recorded them); "
            "call model.note_trained(<training vocabulary>) first."
        )
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    evaluators: dict[float, SegmentationEvaluator] = {}
    try:
        for batch in batches:
            if batch.vocabulary.groups is None:
                raise ValueError("Calibration needs class groups (seen/unseen) in the validation vocabulary.")
            for penalty in grid:
                evaluator = evaluators.get(penalty)
                if evaluator is None:
                    evaluator = SegmentationEvaluator(
                        tasks=("panoptic",), vocabulary=batch.vocabulary, labelled=True, device="cpu"
                    )
                    evaluators[penalty] = evaluator
                pb = evaluator.prediction_batch(batch)
                pb = replace(pb, images=pb.images.to(device))
                results = model.predict(pb, tasks=evaluator.tasks, seen_class_penalty=penalty)
                evaluator.update(batch, results)
    finally:
        model.train(was_training)
    if not evaluators:
        raise ValueError("No validation batches to calibrate on.")
    rows = []
    for penalty in grid:
        values = evaluators[penalty].compute()
        if "pq_seen" not in values or f"pq_{unseen_group}" not in values:
            raise ValueError(
                f"The validation images hold no ground truth of group 'seen' or {unseen_group!r} "
                f"(found {sorted(k for k in values if k.startswith('pq_'))})."
            )
        seen, unseen = values["pq_seen"], values[f"pq_{unseen_group}"]
        rows.append(
            {
                "penalty": penalty,
                "pq": values["pq"],
                "pq_seen": seen,
                "pq_unseen": unseen,
                "harmonic": harmonic_mean(seen, unseen),
            }  # fmt: skip
        )
    best = max(rows, key=lambda r: (round(r["harmonic"], 9), -r["penalty"]))["penalty"]
    return CalibrationSweep(rows=tuple(rows), best=best, unseen_group=unseen_group)
