"""Fixed 2-D sine position encoding (DETR's normalised variant) for the pixel and transformer decoders."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(
    height: int,
    width: int,
    channels: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sine/cosine codes of pixel-centre coordinates normalised to ``(0, 2*pi)``.

    The first half of the channels encodes y, the second half x; within each half even channels are sines and
    odd ones cosines of geometrically spaced frequencies. Normalising by the map size makes codes comparable
    across pyramid levels and image sizes.

    Args:
        height: H.
        width: W.
        channels: C, a multiple of 4.
        temperature: base of the frequency progression.
        device: where to build the codes.
        dtype: their dtype.

    Returns:
        (C, H, W) codes.
    """
    if channels % 4 != 0:
        raise ValueError(f"Sine position encoding needs channels divisible by 4, got {channels}.")
    half = channels // 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * (2 * math.pi)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * (2 * math.pi)
    exponent = 2 * (torch.arange(half, device=device) // 2).float() / half
    freqs = temperature**exponent  # (C/2,)
    pos_y = ys[:, None] / freqs  # (H, C/2)
    pos_x = xs[:, None] / freqs  # (W, C/2)
    pos_y = torch.stack([pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()], dim=2).flatten(1)
    pos_x = torch.stack([pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat(
        [pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)], dim=2
    )  # (H, W, C)
    return pos.permute(2, 0, 1).to(dtype)
