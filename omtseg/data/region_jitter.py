"""Large-scale jitter for region-caption training (SCA's augmentation, after Copy-Paste's LSJ).

Each image is resized so that its longer side is ``s * size`` pixels, ``s ~ U[min_scale, max_scale]``, then a
random ``size`` x ``size`` window is kept (the whole side where the image is smaller; collation pads). Region
masks follow the image (nearest); a region the window cuts away entirely is dropped with its captions.

Region masks overlap (Visual Genome boxes do, heavily), so they are moved one by one rather than through the
panoptic transform's single id map (:class:`omtseg.data.transforms.TrainTransform`). There is no flip: a
caption that says "left of" would then be wrong.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from omtseg.data.regions import RegionSample
from omtseg.data.transforms import nearest_source_indices


class LargeScaleJitter:
    """Rescale by a random factor, then crop a random square window (see the module docstring).

    Args:
        size: side of the training window in pixels (1024 in SCA).
        min_scale: smallest longer side, as a multiple of ``size`` (0.1 in SCA).
        max_scale: largest longer side, as a multiple of ``size`` (2.0 in SCA).
    """

    def __init__(self, *, size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0) -> None:
        if size < 1 or not 0 < min_scale <= max_scale:
            raise ValueError(
                f"Need size >= 1 and 0 < min_scale <= max_scale; got size={size}, min_scale={min_scale}, "
                f"max_scale={max_scale}."
            )
        self.size = size
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, sample: RegionSample, generator: torch.Generator | None = None) -> RegionSample:
        """The jittered sample: image (3, h, w) with h, w <= ``size``, and its surviving regions."""
        h, w = sample.image.shape[-2:]
        u = float(torch.rand((), generator=generator))
        scale = (self.min_scale + (self.max_scale - self.min_scale) * u) * self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = F.interpolate(
            sample.image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
        )[0]  # (3, nh, nw)
        rows, cols = nearest_source_indices(h, nh), nearest_source_indices(w, nw)
        masks = sample.masks[:, rows][:, :, cols]  # (S, nh, nw)
        ch, cw = min(self.size, nh), min(self.size, nw)
        top = int(torch.randint(0, nh - ch + 1, (), generator=generator))
        left = int(torch.randint(0, nw - cw + 1, (), generator=generator))
        image = image[:, top : top + ch, left : left + cw].round().clamp(0, 255).to(torch.uint8)
        masks = masks[:, top : top + ch, left : left + cw]
        kept = masks.flatten(1).any(1).tolist()  # (S,) regions still in the window
        return RegionSample(
            image=image,
            masks=masks[torch.tensor(kept, dtype=torch.bool)],
            captions=[c for c, k in zip(sample.captions, kept, strict=True) if k],
            region_ids=[r for r, k in zip(sample.region_ids, kept, strict=True) if k],
            # A crop has no way back to the original image: the sizes only say what the model sees.
            info=replace(sample.info, orig_size=(ch, cw), resized_size=(ch, cw)),
        )


class JitteredRegions(Dataset):
    """A region-caption dataset whose samples go through :class:`LargeScaleJitter` (for training).

    Args:
        dataset: any region-caption dataset (:mod:`omtseg.data.regions`).
        jitter: the augmentation.
    """

    def __init__(self, *, dataset: Dataset, jitter: LargeScaleJitter) -> None:
        self.dataset = dataset
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> RegionSample:
        return self.jitter(self.dataset[index])
