"""Evaluation over several processes scores every image exactly once: 2 gloo processes give one process's
metrics (PQ, mIoU, AP), also when the split does not divide by the number of processes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omtseg.data.datamodule import EvalDistributedSampler, PanopticDataModule, SyntheticData
from omtseg.lit_module import OMTSegModule
from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.matcher import HungarianMatcher
from omtseg.modeling.postprocess import image_result
from omtseg.types import Batch, ImageResult


def test_eval_sampler_gives_each_item_once_in_contiguous_blocks() -> None:
    blocks = [list(EvalDistributedSampler(range(7), num_replicas=3, rank=r)) for r in range(3)]
    assert blocks == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(EvalDistributedSampler(range(2), num_replicas=3, rank=r)) for r in range(3)] == [1, 1, 0]


class NoisyOracle(nn.Module):
    """Predicts each image's ground truth blurred, with noise, a few wrong labels and spurious masks,
    differently per image: metrics are far from 0 and 100, and a duplicated image would move them."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def predict(self, batch: Batch, tasks: Sequence[str]) -> list[ImageResult]:
        assert batch.targets is not None
        canvas = tuple(batch.images.shape[-2:])
        k = len(batch.vocabulary)
        results = []
        for target, info in zip(batch.targets, batch.infos, strict=True):
            g = torch.Generator().manual_seed(int(info.image_id) + 1)
            masks = torch.cat([target.masks.float(), (torch.rand((2, *canvas), generator=g) > 0.7).float()])
            q = len(masks)
            mask_logits = (F.avg_pool2d(masks[None], 4)[0] * 2 - 1) * 6 + torch.randn(
                (q, canvas[0] // 4, canvas[1] // 4), generator=g
            )
            labels = torch.cat([target.labels, torch.randint(0, k, (2,), generator=g)])
            wrong = torch.rand(q, generator=g) < 0.2
            labels = torch.where(wrong, torch.randint(0, k, (q,), generator=g), labels)
            class_logits = F.one_hot(labels, k).float() * 6 + torch.randn((q, k), generator=g)
            objectness = 3 + torch.randn(q, generator=g)
            results.append(
                image_result(class_logits, objectness, mask_logits, info=info, canvas_hw=canvas,
                             is_thing=batch.vocabulary.is_thing, tasks=tasks, object_threshold=0.5,
                             overlap_threshold=0.5)  # fmt: skip
            )
        return results


def _module() -> OMTSegModule:
    criterion = SetCriterion(matcher=HungarianMatcher(num_points=64), num_points=64)
    return OMTSegModule(model=NoisyOracle(), criterion=criterion)  # type: ignore[arg-type]


def _validate(root: Path, num_images: int, devices: int) -> dict[str, float]:
    data = PanopticDataModule(
        root=str(root), synthetic=SyntheticData(num_train=1, num_val=num_images, num_test=1, image_size=64),
        eval_batch_size=1, eval_size=64,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    (metrics,) = trainer.validate(_module(), datamodule=data, verbose=False)
    return metrics


@pytest.mark.parametrize("num_images", [7, 49])
def test_two_processes_give_the_metrics_of_one(tmp_path: Path, num_images: int) -> None:
    one = _validate(tmp_path, num_images, devices=1)
    two = _validate(tmp_path, num_images, devices=2)
    assert {"val/pq", "val/miou", "val/ap"} <= set(one) and set(one) == set(two)
    for key in ("val/pq", "val/miou", "val/ap"):  # far from 0 and 100: a duplicated image would show
        assert 5.0 < one[key] < 95.0, (key, one[key])
    for key, value in one.items():
        assert math.isclose(two[key], value, rel_tol=0.0, abs_tol=1e-9) or (math.isnan(value) and
                                                                            math.isnan(two[key])), key
