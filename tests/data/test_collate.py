from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from omtseg.data.collate import collate
from omtseg.data.transforms import EvalTransform
from omtseg.types import IGNORE_INDEX, ImageInfo, Sample, Targets, Vocabulary

VOCAB = Vocabulary.from_names(["cat", "grass"], is_thing=[True, False])


def _sample(h: int, w: int, *, labelled: bool = True, content: tuple[int, int] | None = None) -> Sample:
    image = torch.randint(1, 256, (3, h, w), dtype=torch.uint8)
    targets = None
    if labelled:
        cat = torch.zeros((h, w), dtype=torch.bool)
        cat[: h // 2, : w // 2] = True
        void = torch.zeros((h, w), dtype=torch.bool)
        void[-1] = True
        targets = Targets(
            labels=torch.tensor([0, 1]),
            masks=torch.stack([cat, ~cat & ~void]),
            is_thing=torch.tensor([True, False]),
            crowd_labels=torch.zeros(0, dtype=torch.int64),
            crowd_masks=torch.zeros((0, h, w), dtype=torch.bool),
            void=void,
            segment_ids=torch.tensor([1, 2]),
        )
    info = ImageInfo(image_id=h, file_name=f"{h}.png", orig_size=(h, w), resized_size=content or (h, w))
    return Sample(image=image, targets=targets, info=info)


def test_pads_to_batch_max_and_marks_padding() -> None:
    samples = [_sample(13, 21), _sample(19, 7), _sample(5, 5)]
    batch = collate(samples, vocabulary=VOCAB, size_divisibility=8)
    assert batch.images.shape == (3, 3, 24, 24) and batch.images.dtype == torch.uint8
    assert len(batch) == 3 and batch.vocabulary is VOCAB
    assert [i.image_id for i in batch.infos] == [13, 19, 5]
    for b, s in enumerate(samples):
        h, w = s.image.shape[-2:]
        assert torch.equal(batch.images[b, :, :h, :w], s.image)
        assert (batch.images[b, :, h:] == 0).all() and (batch.images[b, :, :, w:] == 0).all()
        assert not batch.padding_mask[b, :h, :w].any()
        assert batch.padding_mask[b].sum() == 24 * 24 - h * w
        t = batch.targets[b]
        assert t.masks.shape == (2, 24, 24) and t.void.shape == (24, 24)
        assert torch.equal(t.masks[:, :h, :w], s.targets.masks) and not t.masks[:, h:].any()
        assert t.void[batch.padding_mask[b]].all()
        assert torch.equal(batch.semantic[b, :h, :w], s.targets.semantic())
        assert (batch.semantic[b][batch.padding_mask[b]] == IGNORE_INDEX).all()


def test_transform_padding_counts_as_padding() -> None:
    s = EvalTransform(size=40, size_divisibility=32)(_sample(10, 20))  # content (20, 40) in a 32x64 image
    batch = collate([s], vocabulary=VOCAB)
    assert batch.images.shape[-2:] == (32, 64)
    assert not batch.padding_mask[0, :20, :40].any() and batch.padding_mask[0, 20:].all()
    assert batch.padding_mask[0, :, 40:].all()


def test_fixed_size_and_single_odd_sample() -> None:
    batch = collate([_sample(11, 3)], vocabulary=VOCAB, fixed_size=(16, 12))
    assert batch.images.shape == (1, 3, 16, 12) and batch.targets[0].masks.shape == (2, 16, 12)
    with pytest.raises(ValueError, match="larger than fixed_size"):
        collate([_sample(20, 3)], vocabulary=VOCAB, fixed_size=(16, 12))


def test_unlabelled_batch_and_errors() -> None:
    batch = collate([_sample(9, 9, labelled=False), _sample(4, 6, labelled=False)], vocabulary=VOCAB)
    assert batch.targets is None and batch.semantic is None and batch.images.shape == (2, 3, 9, 9)
    with pytest.raises(ValueError, match="mixes samples with and without targets"):
        collate([_sample(9, 9), _sample(9, 9, labelled=False)], vocabulary=VOCAB)
    with pytest.raises(ValueError, match="empty list"):
        collate([], vocabulary=VOCAB)


def test_semantic_only_samples() -> None:
    # mIoU-only benchmarks: no panoptic targets, a semantic map per image.
    samples = [_sample(6, 8, labelled=False), _sample(4, 4, labelled=False)]
    samples[0].semantic = torch.full((6, 8), 1)
    samples[1].semantic = torch.zeros((4, 4), dtype=torch.int64)
    batch = collate(samples, vocabulary=VOCAB)
    assert batch.targets is None and batch.semantic.shape == (2, 6, 8)
    assert (batch.semantic[0] == 1).all() and (batch.semantic[1, :4, :4] == 0).all()
    assert (batch.semantic[1, 4:] == IGNORE_INDEX).all() and (batch.semantic[1, :, 4:] == IGNORE_INDEX).all()


def test_lightning_moves_a_batch() -> None:
    # Lightning transfers batches with apply_to_collection, which cannot rebuild the frozen Vocabulary;
    # Batch.to is what it calls instead.
    batch = collate([_sample(6, 8), _sample(5, 3)], vocabulary=VOCAB)
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert moved.vocabulary is VOCAB and torch.equal(moved.images, batch.images)
    assert torch.equal(moved.targets[1].masks, batch.targets[1].masks)


def test_original_labels_travel_with_the_batch() -> None:
    keep = EvalTransform(size=16, size_divisibility=8, keep_original=True)
    samples = [keep(_sample(13, 21)), keep(_sample(9, 7))]
    batch = collate(samples, vocabulary=VOCAB)
    assert [o.targets.void.shape for o in batch.originals] == [(13, 21), (9, 7)]
    assert batch.to("cpu").originals[1].targets.masks.shape == (2, 9, 7)
    mixed = collate([samples[0], EvalTransform(size=16)(_sample(9, 7))], vocabulary=VOCAB)
    assert mixed.originals is None  # all or nothing: metrics then score at the resized size
