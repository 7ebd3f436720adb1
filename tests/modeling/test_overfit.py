"""Training works end to end: a tiny OMTSeg overfits one synthetic batch to PQ >= 90.

The batch (two 64x64 scenes: sky and grass as stuff, a square and a disc as things) and the PQ are built
here, independently of omtseg.data and omtseg.evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.matcher import HungarianMatcher
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, PanopticResult, PanopticSegment, Targets, Vocabulary

SIZE = 64
VOCAB = Vocabulary.from_names(["square", "disc", "sky", "grass"], is_thing=[True, True, False, False])
COLORS = {0: (220, 40, 40), 1: (240, 220, 30), 2: (120, 170, 250), 3: (60, 160, 60)}
MAX_STEPS = 60
PQ_TARGET = 90.0


def scene(seed: int) -> tuple[torch.Tensor, Targets]:
    """A (3, S, S) uint8 image and its targets: sky on top, grass below, one square and one disc."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    sky = yy < 16
    y0, x0 = (int(v) for v in torch.randint(20, 40, (2,), generator=g))
    square = (yy >= y0) & (yy < y0 + 16) & (xx >= x0 - 16) & (xx < x0)
    cy, cx = int(torch.randint(28, 44, (1,), generator=g)), int(torch.randint(40, 52, (1,), generator=g))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 64) & ~square
    grass = ~(sky | square | disc)
    masks = torch.stack([square, disc, sky, grass])
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    for label, mask in enumerate(masks):
        image[:, mask] = torch.tensor(COLORS[label], dtype=torch.uint8)[:, None]
    targets = Targets(
        labels=torch.arange(4),
        masks=masks,
        is_thing=torch.tensor(VOCAB.is_thing),
        crowd_labels=torch.zeros(0, dtype=torch.int64),
        crowd_masks=torch.zeros(0, SIZE, SIZE, dtype=torch.bool),
        void=torch.zeros(SIZE, SIZE, dtype=torch.bool),
        segment_ids=torch.arange(1, 5),
    )
    return image, targets


def panoptic_quality(results: list[PanopticResult], targets: list[Targets], num_classes: int) -> float:
    """PQ (0-100) as panopticapi defines it: IoU > 0.5 matches per class, averaged over seen classes."""
    iou_sum = [0.0] * num_classes
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for result, target in zip(results, targets, strict=True):
        matched_pred: set[int] = set()
        for label, gt in zip(target.labels.tolist(), target.masks, strict=True):
            hit = None
            for seg in result.segments:
                pred = result.id_map == seg.id
                iou = float((pred & gt).sum()) / float((pred | gt).sum())
                if seg.label == label and iou > 0.5:
                    hit = (seg.id, iou)
            if hit is None:
                fn[label] += 1
            else:
                matched_pred.add(hit[0])
                tp[label] += 1
                iou_sum[label] += hit[1]
        for seg in result.segments:
            if seg.id not in matched_pred:
                fp[seg.label] += 1
    seen = [k for k in range(num_classes) if tp[k] + fp[k] + fn[k] > 0]
    return 100.0 * sum(iou_sum[k] / (tp[k] + 0.5 * fp[k] + 0.5 * fn[k]) for k in seen) / len(seen)


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny ops on a shared 2-core machine: OpenMP threads spin-waiting on each other make a step 5-20x
    # slower than a single thread does.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_overfits_one_batch_to_high_pq(one_thread: None) -> None:
    torch.manual_seed(0)
    images, targets = zip(*(scene(seed) for seed in range(2)), strict=True)
    infos = [
        ImageInfo(image_id=i, file_name=f"{i}.png", orig_size=(SIZE, SIZE), resized_size=(SIZE, SIZE))
        for i in range(2)
    ]
    batch = Batch(
        images=torch.stack(images),
        padding_mask=torch.zeros(2, SIZE, SIZE, dtype=torch.bool),
        targets=list(targets),
        infos=infos,
        vocabulary=VOCAB,
    )
    model = OMTSeg(
        backbone="tiny",
        img_size=SIZE,
        adapter_channels=32,
        conv_dim=32,
        mask_dim=32,
        num_pixel_decoder_layers=1,
        hidden_dim=32,
        num_queries=8,
        num_decoder_layers=3,
        num_heads=4,
        decoder_feedforward=64,
        pixel_decoder_feedforward=64,
    )
    criterion = SetCriterion(matcher=HungarianMatcher(num_points=1024), num_points=1024)
    params = [p for group in model.trainable_parameters().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    num_masks = float(sum(len(t.labels) for t in batch.targets))

    losses, pq = [], 0.0
    for step in range(1, MAX_STEPS + 1):
        loss = criterion(model(batch.images, VOCAB), batch.targets, num_masks)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step >= 20 and step % 5 == 0:
            model.eval()
            pq = panoptic_quality(
                [r.panoptic for r in model.predict(batch, tasks=("panoptic",))], batch.targets, 4
            )
            model.train()
            if pq >= PQ_TARGET:
                break
    assert pq >= PQ_TARGET, f"PQ {pq:.1f} after {step} steps (losses {losses[0]:.2f} -> {losses[-1]:.2f})"
    assert losses[-1] < 0.5 * losses[0]


def test_pq_reference_counts_matches_and_misses() -> None:
    _, target = scene(0)
    ids = torch.zeros(SIZE, SIZE, dtype=torch.int32)
    for i, mask in enumerate(target.masks[:3]):
        ids[mask] = i + 1
    segments = [
        PanopticSegment(id=i + 1, label=i, is_thing=i < 2, score=1.0, area=int(m.sum()))
        for i, m in enumerate(target.masks[:3])
    ]
    perfect_but_grass = PanopticResult(id_map=ids, segments=segments)
    # Three classes matched with IoU 1, grass missed: PQ = (1 + 1 + 1 + 0) / 4.
    assert panoptic_quality([perfect_but_grass], [target], 4) == pytest.approx(75.0)
    segments[0].label = 1  # the square called a disc: one FP for disc, one FN for square
    assert panoptic_quality([perfect_but_grass], [target], 4) == pytest.approx(100.0 * (1 / 1.5 + 1) / 4)
