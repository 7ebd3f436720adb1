"""Point sampling shared by the matcher and the criterion (PointRend-style, as Mask2Former trains).

Masks are compared on a few thousand points instead of every pixel. Points live in normalised image
coordinates ``(x, y)`` in ``[0, 1]`` over the prediction canvas (the padded image), so predictions at stride 4
and targets at full resolution are read at the same places without resizing either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(masks: Tensor, coords: Tensor, *, extent: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """Bilinearly read ``masks`` at normalised points.

    Args:
        masks: (N, C, H, W) float maps.
        coords: (N, P, 2) points ``(x, y)`` in ``[0, 1]`` of the canvas.
        extent: ``(ey, ex)``, how much of the canvas the maps cover (fraction of canvas height and width,
            anchored top-left). Points beyond the maps read 0, which is what padding means for a target.

    Returns:
        (N, C, P) sampled values.
    """
    scale = coords.new_tensor([1.0 / extent[1], 1.0 / extent[0]])
    grid = (coords * scale * 2.0 - 1.0).unsqueeze(1)  # (N, 1, P, 2) in grid_sample's [-1, 1]
    # align_corners=False: [-1, 1] spans pixel edges, so point u in [0, 1] is u * W in pixel units.
    out = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(2)


def target_extent(target_hw: Sequence[int], canvas_hw: Sequence[int]) -> tuple[float, float]:
    """The fraction of the prediction canvas a target of size ``target_hw`` covers (top-left anchored).

    Raises:
        ValueError: the target is larger than the canvas the predictions cover.
    """
    (th, tw), (ch, cw) = target_hw, canvas_hw
    if th > ch or tw > cw:
        raise ValueError(
            f"Target masks of size {tuple(target_hw)} exceed the prediction canvas {tuple(canvas_hw)}; "
            "targets must be at the (unpadded or padded) input image size, not larger."
        )
    return th / ch, tw / cw


def uncertain_point_coords(
    logits: Tensor,
    *,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Points biased to where predictions are uncertain, plus uniform ones (Mask2Former's training points).

    ``oversample_ratio * num_points`` candidates are drawn uniformly; the ``importance_sample_ratio`` share
    of ``num_points`` with the highest uncertainty (``-|logit|``) is kept, the rest drawn fresh uniformly.

    Args:
        logits: (N, 1, H, W) mask logits.
        num_points: points per mask.
        oversample_ratio: candidates per kept point (>= 1).
        importance_sample_ratio: share of points chosen by uncertainty, in [0, 1].
        generator: optional RNG for reproducibility.

    Returns:
        (N, num_points, 2) coordinates in [0, 1].
    """
    if oversample_ratio < 1.0 or not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(
            f"Need oversample_ratio >= 1 and importance_sample_ratio in [0, 1], got {oversample_ratio} and "
            f"{importance_sample_ratio}."
        )
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = torch.rand(n, num_sampled, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, coords).abs().squeeze(1)  # (N, num_sampled)
    idx = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    fresh = torch.rand(n, num_random, 2, device=logits.device, generator=generator)
    return torch.cat([picked, fresh], dim=1)
