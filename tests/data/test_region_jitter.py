"""Large-scale jitter of region samples: sizes in range, masks moved with the image, cut regions dropped."""

from __future__ import annotations

import pytest
import torch

from omtseg.data.region_jitter import JitteredRegions, LargeScaleJitter
from omtseg.data.regions import RegionSample, collate_regions
from omtseg.types import ImageInfo


def _sample() -> RegionSample:
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[0, 10:20, 60:80] = 255  # red where region 1 lies
    masks = torch.zeros(3, 40, 80, dtype=torch.bool)
    masks[0, 0:40, 0:80] = True  # the whole image
    masks[1, 10:20, 60:80] = True  # right part
    masks[2, 30:40, 0:10] = True  # bottom-left corner, overlapping region 0
    info = ImageInfo(image_id=7, file_name="7.jpg", orig_size=(40, 80), resized_size=(40, 80))
    return RegionSample(image, masks, [["all"], ["red"], ["corner"]], ["a", "b", "c"], info)


def test_jitter_scales_crops_and_keeps_masks_on_their_pixels() -> None:
    jitter = LargeScaleJitter(size=32, min_scale=0.5, max_scale=2.0)
    sides, dropped = set(), 0
    for seed in range(40):
        out = jitter(_sample(), torch.Generator().manual_seed(seed))
        h, w = out.image.shape[-2:]
        assert h <= 32 and w <= 32 and out.masks.shape[1:] == (h, w) and out.info.resized_size == (h, w)
        assert out.region_ids[0] == "a" and out.captions[0] == ["all"]  # the whole-image region always stays
        assert len(out.region_ids) == len(out.captions) == out.masks.shape[0]
        assert out.masks.flatten(1).any(1).all()
        if "b" in out.region_ids:  # region 1 still sits on the red pixels (edges blurred by the resize)
            inside = out.masks[out.region_ids.index("b")]
            red = out.image[0].float()
            assert red[inside].mean() > 120 and red[~inside].mean() < 40
        dropped += 3 - len(out.region_ids)
        sides.add(max(h, w))
    assert min(sides) < 20 and max(sides) == 32 and dropped > 0  # small and cropped draws both happen
    batch = collate_regions([jitter(_sample()) for _ in range(2)])
    assert batch.masks.shape[0] == len(batch.region_ids)


def test_jittered_dataset_and_bad_arguments() -> None:
    data = JitteredRegions(dataset=[_sample(), _sample()], jitter=LargeScaleJitter(size=16))
    assert len(data) == 2 and max(data[1].image.shape[-2:]) <= 16
    with pytest.raises(ValueError, match="min_scale"):
        LargeScaleJitter(size=16, min_scale=2.0, max_scale=1.0)
