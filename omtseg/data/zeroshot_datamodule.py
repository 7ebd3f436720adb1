"""The LightningDataModule that evaluates a COCO-trained model zero-shot on one benchmark.

``omtseg test --config configs/eval/<benchmark>.yaml --ckpt_path CKPT`` uses it as ``data:``; so does
``omtseg eval-all``. Its batches carry the benchmark's vocabulary (K = 20 ... 847 classes), which
the model prompts with, and the labels that benchmark scores:

- semantic benchmarks (ADE20K-847, Pascal Context-59/459, Pascal VOC-20, ADE20K-150 semantic) give
  ``Batch.semantic`` only, so the LightningModule computes mIoU and nothing else (a label map has no
  instances, so PQ or AP on it would be meaningless);
- ``ade20k_150_panoptic`` also gives panoptic ``Batch.targets``: PQ, AP and mIoU from one pass.

Layouts and the datasets root are those of :mod:`omtseg.data.benchmark_registry` (``omtseg prepare`` builds
them); images go through the data engineer's :class:`~omtseg.data.transforms.EvalTransform` and
:func:`~omtseg.data.collate.collate`, as the COCO validation split does.
"""

from __future__ import annotations

import os
from functools import partial

from lightning import LightningDataModule
from torch.utils.data import DataLoader

from omtseg.data.benchmark_registry import SPLIT_DIRS, benchmark_spec, datasets_root, zero_shot_vocabulary
from omtseg.data.collate import collate
from omtseg.data.datamodule import eval_sampler
from omtseg.data.transforms import EvalTransform
from omtseg.data.zeroshot import ADE20KPanopticDataset, SemanticSegmentationDataset, zero_shot_dataset
from omtseg.types import Vocabulary

EVAL_STAGES = ("validate", "test", "predict")
"""Trainer stages a zero-shot benchmark serves; training happens on COCO (``PanopticDataModule``)."""


def benchmark_tasks(benchmark: str) -> tuple[str, ...]:
    """What a benchmark can score: ``("panoptic", "semantic", "instance")`` with panoptic ground truth,
    else ``("semantic",)``. These are the LightningModule's ``eval_tasks`` names."""
    return ("panoptic", "semantic", "instance") if benchmark_spec(benchmark).is_panoptic else ("semantic",)


def benchmark_missing(
    benchmark: str, *, root: str | os.PathLike[str] | None = None, split: str = "val"
) -> str | None:
    """Why ``benchmark`` cannot be loaded from ``root``, or None when its prepared layout is complete.

    Only absence counts (a folder, JSON or label file not found): a layout that exists but is damaged
    raises here, because skipping it would hide a broken dataset.

    Raises:
        ValueError: unknown benchmark or split; files that exist but do not belong to the benchmark.
    """
    try:
        zero_shot_dataset(benchmark, split=split, root=datasets_root(root), with_targets=False)
    except FileNotFoundError as e:
        return str(e)
    return None


class ZeroShotDataModule(LightningDataModule):
    """One zero-shot benchmark's evaluation split, for ``validate``, ``test`` and ``predict``.

    Args:
        benchmark: a name of :data:`~omtseg.data.benchmark_registry.BENCHMARKS`: ``ade20k_150_panoptic``
            (PQ, AP, mIoU), ``ade20k_150``, ``ade20k_847``, ``pascal_context_59``, ``pascal_context_459``,
            ``pascal_voc_20`` (mIoU).
        root: datasets root; None: ``$OMTSEG_DATASETS``, else ``data``.
        split: ``"val"`` (the zero-shot protocol) or ``"train"``.
        eval_size: long side of the resized images, pixels (640 as in training); None keeps originals.
        eval_at_original_size: score val/test predictions resized back to each image's original size
            against the untransformed ground truth, as official evaluations do; False scores at ``eval_size``.
        size_divisibility: pad batches to a multiple of this (the backbone's largest stride).
        batch_size: images per batch; 1 avoids padding mixed aspect ratios into wasted pixels.
        num_workers: dataloader worker processes (0 loads in the main process).
        pin_memory: pin batches in page-locked memory (GPU evaluation).

    Raises:
        ValueError: unknown benchmark or split, or a non-positive size.
    """

    def __init__(
        self,
        *,
        benchmark: str,
        root: str | None = None,
        split: str = "val",
        eval_size: int | None = 640,
        eval_at_original_size: bool = True,
        size_divisibility: int = 32,
        batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.spec = benchmark_spec(benchmark)
        if split not in SPLIT_DIRS:
            raise ValueError(f"Unknown split {split!r}; use one of {sorted(SPLIT_DIRS)} (zero-shot: 'val').")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.benchmark = benchmark
        self.root = datasets_root(root)
        self.split = split
        self.transform = EvalTransform(
            size=eval_size, size_divisibility=size_divisibility, keep_original=eval_at_original_size
        )
        self.eval_size = eval_size  # recorded in checkpoints as the default image size
        self.size_divisibility = size_divisibility
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.dataset: SemanticSegmentationDataset | ADE20KPanopticDataset | None = None

    @property
    def vocabulary(self) -> Vocabulary:
        """The benchmark's K classes in label order (what the model is prompted with)."""
        return zero_shot_vocabulary(self.benchmark)

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this benchmark scores (see :func:`benchmark_tasks`)."""
        return benchmark_tasks(self.benchmark)

    def setup(self, stage: str | None = None) -> None:
        """Load the split's file list (``validate``, ``test``, ``predict`` or None).

        Raises:
            ValueError: ``stage="fit"``: zero-shot benchmarks are never trained on.
            FileNotFoundError: the layout is missing; the message names the ``omtseg prepare`` command.
        """
        if stage is not None and stage not in EVAL_STAGES:
            raise ValueError(
                f"{self.spec.title} is a zero-shot benchmark: it serves {EVAL_STAGES}, not {stage!r}. "
                "Train with the COCO data config (PanopticDataModule) and evaluate with this one."
            )
        if self.dataset is None:
            self.dataset = zero_shot_dataset(
                self.benchmark,
                split=self.split,
                root=self.root,
                with_targets=self.spec.is_panoptic,
                transform=self.transform,
            )

    def _loader(self) -> DataLoader:
        if self.dataset is None:
            raise RuntimeError("The benchmark dataset is not set up; call setup() first.")
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=eval_sampler(self.dataset),  # in order; across processes, each image once
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(collate, vocabulary=self.vocabulary, size_divisibility=self.size_divisibility),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
