"""InstanceAP: perfect and hand-built cases, stuff and crowd handling, empty inputs, errors."""

from __future__ import annotations

import math
import socket

import pytest
import torch

from omtseg.evaluation.instance import InstanceAP
from omtseg.types import InstanceResult, Targets, Vocabulary

VOCABULARY = Vocabulary.from_names(["cat", "dog", "sky"], is_thing=[True, True, False])


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _targets(
    masks: list[torch.Tensor], labels: list[int], crowd: list[torch.Tensor] = (), crowd_labels=()
) -> Targets:
    h, w = masks[0].shape if masks else crowd[0].shape
    return Targets(
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
        is_thing=torch.tensor([VOCABULARY.is_thing[k] for k in labels], dtype=torch.bool),
        crowd_labels=torch.tensor(list(crowd_labels), dtype=torch.int64),
        crowd_masks=torch.stack(list(crowd)) if crowd else torch.zeros(0, h, w, dtype=torch.bool),
        void=torch.zeros(h, w, dtype=torch.bool),
        segment_ids=torch.arange(1, len(labels) + 1),
    )


def _result(
    masks: list[torch.Tensor], labels: list[int], scores: list[float], size=(20, 30)
) -> InstanceResult:
    return InstanceResult(
        masks=torch.stack(masks) if masks else torch.zeros(0, *size, dtype=torch.bool),
        labels=torch.tensor(labels, dtype=torch.int64),
        scores=torch.tensor(scores),
    )


def test_perfect_prediction_scores_one() -> None:
    cat, dog, sky = _box(20, 30, 0, 5, 0, 5), _box(20, 30, 8, 12, 10, 17), _box(20, 30, 15, 20, 0, 30)
    metric = InstanceAP(vocabulary=VOCABULARY)
    metric.update([_result([cat, dog], [0, 1], [0.9, 0.8])], [_targets([cat, dog, sky], [0, 1, 2])])
    result = metric.compute()
    assert [result[k] for k in ("AP", "AP50", "AP75", "APs")] == pytest.approx([1.0] * 4)
    assert math.isnan(result["APm"]) and math.isnan(result["APl"])  # no medium or large ground truth


def test_hand_built_precision_recall() -> None:
    # Two cats; one found exactly (score 0.9), one false positive (0.8), one cat missed. Precision is 1 up to
    # recall 0.5 and recall never exceeds 0.5: 51 of COCO's 101 recall points have precision 1.
    cat_a, cat_b, wrong = _box(20, 30, 0, 5, 0, 5), _box(20, 30, 0, 5, 10, 15), _box(20, 30, 10, 15, 20, 25)
    metric = InstanceAP(vocabulary=VOCABULARY)
    metric.update([_result([cat_a, wrong], [0, 0], [0.9, 0.8])], [_targets([cat_a, cat_b], [0, 0])])
    result = metric.compute()
    assert result["AP"] == pytest.approx(51 / 101) and result["AP50"] == pytest.approx(51 / 101)


def test_stuff_is_ignored_and_crowd_absorbs_detections() -> None:
    cat, crowd = _box(20, 30, 0, 5, 0, 5), _box(20, 30, 10, 20, 0, 30)
    targets = _targets([cat, _box(20, 30, 5, 10, 0, 30)], [0, 2], crowd=[crowd], crowd_labels=[0])
    # An exact cat, a misplaced sky "instance" (stuff: dropped, else sky AP 0 would halve the mean) and a
    # cat inside the crowd region (absorbed, not a false positive).
    sky_elsewhere, in_crowd = _box(20, 30, 0, 3, 20, 30), _box(20, 30, 12, 18, 2, 9)
    preds = _result([cat, sky_elsewhere, in_crowd], [0, 2, 0], [0.5, 0.9, 0.95])
    metric = InstanceAP(vocabulary=VOCABULARY)
    metric.update([preds], [targets])
    assert metric.compute()["AP"] == pytest.approx(1.0)


def test_empty_inputs() -> None:
    metric = InstanceAP(vocabulary=VOCABULARY)
    assert all(math.isnan(v) for v in metric.compute().values())
    cat = _box(9, 13, 2, 6, 3, 8)
    metric.update([_result([], [], [], size=(9, 13))], [_targets([cat], [0])])
    assert metric.compute()["AP"] == 0.0
    metric.reset()
    metric.update([_result([], [], [], size=(9, 13))], [_targets([_box(9, 13, 0, 9, 0, 13)], [2])])
    assert math.isnan(metric.compute()["AP"])


def test_bad_inputs_raise() -> None:
    metric = InstanceAP(vocabulary=VOCABULARY)
    cat = _box(20, 30, 0, 5, 0, 5)
    with pytest.raises(ValueError, match="ground truth's size"):
        metric.update([_result([], [], [], size=(10, 30))], [_targets([cat], [0])])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        metric.update([_result([cat], [7], [0.5])], [_targets([cat], [0])])
    with pytest.raises(ValueError, match="1 predictions for 0 targets"):
        metric.update([_result([cat], [0], [0.5])], [])


RANGES = ((0, 12), (0, 20), (-2, 3), (-2, 3))  # box corner y, x and the prediction's shift dy, dx


def _random_images(seed: int, count: int) -> list[tuple[InstanceResult, Targets]]:
    """Images with 1-3 boxes of random classes; predictions shifted a little, with random scores."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        truth, found, labels = [], [], []
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            y0, x0, dy, dx = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in RANGES)
            truth.append(_box(20, 30, y0, y0 + 7, x0, x0 + 9))
            found.append(_box(20, 30, max(y0 + dy, 0), y0 + dy + 7, max(x0 + dx, 0), x0 + dx + 9))
            labels.append(int(torch.randint(0, 2, (), generator=gen)))
        scores = torch.rand(len(found), generator=gen).tolist()
        images.append((_result(found, labels, scores), _targets(truth, labels)))
    return images


def _distributed_ap(rank: int, world_size: int, port: int, queue) -> None:
    address = f"tcp://127.0.0.1:{port}"
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    metric = InstanceAP(vocabulary=VOCABULARY)
    for pred, target in _random_images(0, 12)[rank::world_size]:  # each process sees its share
        metric.update([pred], [target])
    queue.put((rank, metric.compute()))
    torch.distributed.destroy_process_group()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_compute_gathers_every_process(free_port: int) -> None:
    # Two processes that each saw half of the images report the AP of all of them.
    whole = InstanceAP(vocabulary=VOCABULARY)
    for pred, target in _random_images(0, 12):
        whole.update([pred], [target])
    expected = whole.compute()
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_distributed_ap, args=(r, 2, free_port, queue)) for r in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    single = InstanceAP(vocabulary=VOCABULARY)
    for pred, target in _random_images(0, 12)[0::2]:
        single.update([pred], [target])
    assert single.compute()["AP"] != pytest.approx(expected["AP"])  # half the images alone differ
    for rank in range(2):
        assert results[rank] == pytest.approx(expected, nan_ok=True)
