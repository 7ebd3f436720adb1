"""Box geometry shared by the data and the captioner: rasterising boxes into region masks.

A box-annotated region (Visual Genome) and a box prompt are both captioned as the mask of their box.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Rasterise boxes into masks, so a box prompt or a box-annotated region is captioned like a segment.

    Args:
        boxes: (S, 4) ``x0, y0, x1, y1`` in pixels of a canvas of ``size`` (float64 boxes are compared in
            float64, others in float32).
        size: (H, W) of the masks.

    Returns:
        (S, H, W) bool, True at pixels whose centre lies inside the box, and always at the pixel holding the
        box's centre, so a box thinner than a pixel still marks a region.
    """
    h, w = size
    b = boxes if boxes.dtype == torch.float64 else boxes.float()
    ys = torch.arange(h, device=boxes.device)
    xs = torch.arange(w, device=boxes.device)
    cy = ((b[:, 1] + b[:, 3]) / 2).floor().clamp(0, h - 1)[:, None]  # (S, 1)
    cx = ((b[:, 0] + b[:, 2]) / 2).floor().clamp(0, w - 1)[:, None]
    in_y = ((ys + 0.5 >= b[:, 1:2]) & (ys + 0.5 <= b[:, 3:4])) | (ys == cy)  # (S, H)
    in_x = ((xs + 0.5 >= b[:, 0:1]) & (xs + 0.5 <= b[:, 2:3])) | (xs == cx)  # (S, W)
    return in_y[:, :, None] & in_x[:, None, :]
