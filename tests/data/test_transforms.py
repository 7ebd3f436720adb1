from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omtseg.data.transforms import (
    EvalTransform,
    TrainTransform,
    crop,
    hflip,
    nearest_source_indices,
    pad,
    resize,
)
from omtseg.types import IGNORE_INDEX, ImageInfo, Sample, Targets

# Solid, well separated colors: a pixel's color says which region it came from.
COLORS = torch.tensor(
    [[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [30, 200, 200], [0, 0, 0]]
)


def _sample(h: int, w: int, *, semantic: bool = False) -> Sample:
    """Regions: 0 background (stuff), 1 and 2 boxes (things), 3 a crowd box, 4 a void box."""
    region = torch.zeros((h, w), dtype=torch.int64)
    region[h // 5 : h // 2, w // 6 : w // 2] = 1
    region[h // 2 : 4 * h // 5, w // 2 : 5 * w // 6] = 2
    region[: h // 6, 5 * w // 6 :] = 3
    region[5 * h // 6 :, : w // 8] = 4
    image = COLORS[region].permute(2, 0, 1).to(torch.uint8).contiguous()
    targets = Targets(
        labels=torch.tensor([5, 0, 1]),
        masks=torch.stack([region == 0, region == 1, region == 2]),
        is_thing=torch.tensor([False, True, True]),
        crowd_labels=torch.tensor([1]),
        crowd_masks=(region == 3)[None],
        void=region == 4,
        segment_ids=torch.tensor([10, 11, 12]),
    )
    info = ImageInfo(image_id=1, file_name="x.png", orig_size=(h, w), resized_size=(h, w))
    return Sample(image=image, targets=targets, info=info, semantic=targets.semantic() if semantic else None)


def _region_map(t: Targets) -> torch.Tensor:
    """(H, W) region id per pixel from the targets, via the segment ids (crowd 3, void 4, none -1)."""
    out = torch.full(t.void.shape, -1)
    for seg_id, mask in zip(t.segment_ids.tolist(), t.masks, strict=True):
        out[mask] = seg_id - 10
    for mask in t.crowd_masks:
        out[mask] = 3
    out[t.void] = 4
    return out


def _assert_aligned(s: Sample, upscale: float = 1.0) -> None:
    """Image colors agree with the labels wherever all bilinear taps fall in one region; padding is void.

    A pixel counts when its whole neighbourhood of radius ``ceil(upscale) + 1`` has one label: upscaling
    by ``f`` spreads an input pixel over ``f`` output pixels, and antialiased shrinking over one.
    """
    regions = _region_map(s.targets)
    assert (regions >= 0).all(), "every pixel is a segment, crowd or void"
    expected = COLORS[regions].permute(2, 0, 1)  # (3, H, W)
    r = math.ceil(upscale) + 1
    lo = -F.max_pool2d(-regions[None, None].float(), 2 * r + 1, 1, r)
    interior = (F.max_pool2d(regions[None, None].float(), 2 * r + 1, 1, r) == lo)[0, 0]
    rh, rw = s.info.resized_size
    content = torch.zeros_like(interior)
    content[:rh, :rw] = True
    inner = torch.zeros_like(interior)  # a crop cuts regions whose pixels outside it still blur in
    inner[r : rh - r, r : rw - r] = True
    diff = (s.image.long() - expected).abs().amax(0)
    assert (interior & inner).sum() > 0
    assert (diff[interior & inner] <= 1).all()
    assert s.targets.void[~content].all() and (s.image[:, ~content] == 0).all()


@pytest.mark.parametrize(
    ("in_len", "out_len"), [(7, 3), (3, 7), (37, 53), (53, 37), (64, 64), (5, 1), (1, 4)]
)
def test_nearest_indices_match_torch_nearest_exact(in_len: int, out_len: int) -> None:
    x = torch.arange(in_len, dtype=torch.float32)[None, None]
    ref = F.interpolate(x, size=out_len, mode="nearest-exact")[0, 0].long()
    assert torch.equal(nearest_source_indices(in_len, out_len), ref)


def test_hflip_mirrors_image_and_labels() -> None:
    s = _sample(13, 17, semantic=True)
    f = hflip(s)
    assert torch.equal(f.image, s.image.flip(-1))
    assert torch.equal(f.targets.masks, s.targets.masks.flip(-1))
    assert torch.equal(f.targets.crowd_masks, s.targets.crowd_masks.flip(-1))
    assert torch.equal(f.semantic, s.semantic.flip(-1))
    assert f.info.flipped and not hflip(f).info.flipped
    assert torch.equal(hflip(f).targets.void, s.targets.void)


def test_resize_keeps_masks_aligned_at_odd_sizes() -> None:
    s = _sample(37, 53)
    for size in [(19, 27), (75, 101), (37, 53)]:
        r = resize(s, size)
        assert r.image.shape == (3, *size) and r.targets.masks.shape[1:] == size
        assert r.info.resized_size == size
        _assert_aligned(r, upscale=size[1] / 53)


def test_crop_drops_segments_it_removes_and_can_empty_targets() -> None:
    s = _sample(40, 48)
    c = crop(s, 0, 0, 6, 6)  # top-left corner: background only
    assert c.targets.labels.tolist() == [5] and c.targets.segment_ids.tolist() == [10]
    assert c.targets.crowd_masks.shape == (0, 6, 6)
    v = crop(s, 36, 0, 4, 5)  # inside the void box: no segment at all
    assert v.targets.labels.shape == (0,) and v.targets.masks.shape == (0, 4, 5)
    assert v.targets.void.all() and (v.targets.semantic() == IGNORE_INDEX).all()


def test_pad_marks_void_and_ignore() -> None:
    s = _sample(11, 9, semantic=True)
    p = pad(s, (16, 16))
    assert p.image.shape == (3, 16, 16) and p.info.resized_size == (11, 9)
    assert p.targets.void[11:].all() and p.targets.void[:, 9:].all()
    assert (p.semantic[11:] == IGNORE_INDEX).all() and torch.equal(p.semantic[:11, :9], s.semantic)
    with pytest.raises(ValueError, match="smaller size"):
        pad(s, (8, 8))


@pytest.mark.parametrize(("h", "w", "crop_size"), [(37, 53, 32), (53, 37, 64), (20, 90, 33), (64, 64, 64)])
def test_train_transform_shapes_alignment(h: int, w: int, crop_size: int) -> None:
    transform = TrainTransform(crop_size=crop_size)
    for seed in range(6):
        out = transform(_sample(h, w), torch.Generator().manual_seed(seed))
        assert out.image.shape == (3, crop_size, crop_size) and out.image.dtype == torch.uint8
        t = out.targets
        assert t.masks.shape[1:] == t.void.shape == (crop_size, crop_size)
        assert len(t.labels) == len(t.masks) == len(t.is_thing) == len(t.segment_ids)
        assert all(m.any() for m in t.masks), "empty masks are dropped"
        assert out.info.orig_size == (h, w)
        _assert_aligned(out, upscale=2 * crop_size / min(h, w))


def test_train_transform_is_deterministic_given_a_seed() -> None:
    transform = TrainTransform(crop_size=24)
    s = _sample(31, 45)
    a = transform(s, torch.Generator().manual_seed(7))
    b = transform(s, torch.Generator().manual_seed(7))
    assert torch.equal(a.image, b.image) and torch.equal(a.targets.masks, b.targets.masks)
    outs = [transform(s, torch.Generator().manual_seed(k)) for k in range(8)]
    assert len({(o.info.flipped, o.info.resized_size, o.image.sum().item()) for o in outs}) > 1
    assert {o.info.flipped for o in outs} == {False, True}


def test_train_transform_flip_only_is_exact() -> None:
    # Scale fixed at 1 (short side == crop size) and a square image: the output is the (flipped) input.
    s = _sample(24, 24)
    out = TrainTransform(crop_size=24, min_scale=1.0, max_scale=1.0, flip_prob=1.0)(s)
    assert out.info.flipped and torch.equal(out.image, s.image.flip(-1))
    assert torch.equal(out.targets.masks, s.targets.masks.flip(-1))


def test_train_transform_without_segments_and_without_targets() -> None:
    s = _sample(20, 20)
    empty = Targets(
        labels=torch.zeros(0, dtype=torch.int64),
        masks=torch.zeros((0, 20, 20), dtype=torch.bool),
        is_thing=torch.zeros(0, dtype=torch.bool),
        crowd_labels=torch.zeros(0, dtype=torch.int64),
        crowd_masks=torch.zeros((0, 20, 20), dtype=torch.bool),
        void=torch.ones((20, 20), dtype=torch.bool),
        segment_ids=torch.zeros(0, dtype=torch.int64),
    )
    out = TrainTransform(crop_size=16)(Sample(s.image, empty, s.info), torch.Generator().manual_seed(0))
    assert out.targets.masks.shape == (0, 16, 16) and out.targets.void.all()
    bare = TrainTransform(crop_size=16)(Sample(s.image, None, s.info, semantic=s.targets.semantic()))
    assert bare.targets is None and bare.semantic.shape == (16, 16)


def test_eval_transform_resizes_long_side_and_pads_to_multiple() -> None:
    s = _sample(37, 53, semantic=True)
    out = EvalTransform(size=96, size_divisibility=32)(s)
    assert out.info.resized_size == (67, 96) and out.info.orig_size == (37, 53)
    assert out.image.shape == (3, 96, 96) and out.targets.void.shape == (96, 96)
    assert (out.semantic[67:] == IGNORE_INDEX).all()
    _assert_aligned(out, upscale=96 / 53)
    same = EvalTransform(size=None, size_divisibility=1)(s)
    assert torch.equal(same.image, s.image) and same.info.resized_size == (37, 53)


def test_overlapping_masks_are_rejected() -> None:
    s = _sample(10, 10)
    s.targets.masks[1, 0, 0] = True  # pixel (0, 0) now in segments 0 and 1
    with pytest.raises(ValueError, match="overlap"):
        hflip(s)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform(crop_size=0)
    with pytest.raises(ValueError, match="min_scale"):
        TrainTransform(min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="size_divisibility"):
        EvalTransform(size_divisibility=0)


def test_eval_transform_keeps_the_original_labels_when_asked() -> None:
    s = _sample(37, 53, semantic=True)
    out = EvalTransform(size=96, size_divisibility=32, keep_original=True)(s)
    assert out.targets.void.shape == (96, 96)  # the resized labels, as without keep_original
    assert out.original.targets is s.targets and out.original.semantic is s.semantic
    assert out.original.semantic_labels().shape == out.info.orig_size == (37, 53)
    assert EvalTransform(size=96)(s).original is None
    unlabelled = Sample(s.image, None, s.info)
    assert EvalTransform(size=96, keep_original=True)(unlabelled).original is None
