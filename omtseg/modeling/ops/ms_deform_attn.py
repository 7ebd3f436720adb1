"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch.

Each query looks at ``P`` points per level and head, placed at learned offsets around its reference point,
reads the value maps there by bilinear interpolation (zero outside a map) and mixes the reads with softmax
weights over all ``L * P`` points of its head. Sampling uses ``grid_sample`` with ``align_corners=False``: a
location ``u`` in ``[0, 1]`` of a map of width ``W`` is pixel coordinate ``u * W - 0.5``, so ``u = 0`` and
``u = 1`` are the outer pixel edges. No compiled extension: the op runs wherever PyTorch runs, and autograd
gives its gradients.

Shape letters: B batch, Nq queries, Nv value tokens (all levels, flattened row-major per level, concatenated),
M heads, Dh channels per head, L levels, P points, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def flatten_levels(maps: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Maps to the token layout of :class:`MSDeformAttn` values.

    Args:
        maps: L tensors (B, C, H_l, W_l).

    Returns:
        tokens (B, Nv, C) (each level row-major, levels concatenated), spatial_shapes (L, 2) long (H_l, W_l),
        level_start_index (L,) long.
    """
    if len(maps) == 0:
        raise ValueError("flatten_levels needs at least one feature map.")
    tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in maps], dim=1)
    spatial_shapes = torch.tensor([f.shape[-2:] for f in maps], dtype=torch.long, device=tokens.device)
    return tokens, spatial_shapes, level_offsets(spatial_shapes)


def level_offsets(spatial_shapes: Tensor) -> Tensor:
    """(L,) long offsets of each level in the flattened tokens, from (L, 2) long (H_l, W_l)."""
    sizes = spatial_shapes.prod(-1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def pixel_centers(spatial_shapes: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Centres of every pixel of every level, the usual reference points of dense queries.

    Args:
        spatial_shapes: (L, 2) long (H_l, W_l).
        dtype: float dtype of the result.

    Returns:
        (Nv, 2) points (x, y) in [0, 1], in the flattened token order of :func:`flatten_levels`.
    """
    points = []
    for h, w in spatial_shapes.tolist():
        ys = (torch.arange(h, dtype=dtype, device=spatial_shapes.device) + 0.5) / h
        xs = (torch.arange(w, dtype=dtype, device=spatial_shapes.device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))  # (H_l*W_l, 2)
    return torch.cat(points, 0)


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Weighted bilinear reads of multi-level value maps.

    Levels are sampled one after another and accumulated, so only one level's reads (B*M, Dh, Nq, P) live at a
    time instead of all ``L`` stacked (the difference is the forward's peak memory; see
    ``benchmarks/deform_attn_speed.py``).

    Args:
        value: (B, Nv, M, Dh) values, levels concatenated along Nv in ``spatial_shapes`` order.
        spatial_shapes: (L, 2) long, (H_l, W_l) of each level; ``sum(H_l * W_l) == Nv``.
        sampling_locations: (B, Nq, M, L, P, 2) points (x, y) normalised to [0, 1] of their level.
        attention_weights: (B, Nq, M, L, P) weights (normally a softmax over L * P per head).

    Returns:
        (B, Nq, M * Dh), heads concatenated head-major (channel ``m * Dh + d``).
    """
    b, nv, m, dh = value.shape
    _, nq, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    assert len(shapes) == n_levels and sum(h * w for h, w in shapes) == nv, "value/spatial_shapes mismatch"
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample's [-1, 1] convention
    out = value.new_zeros(b * m, dh, nq)
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(b * m, dh, h, w)  # (B*M, Dh, H_l, W_l)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * m, nq, n_points, 2)  # (B*M, Nq, P, 2)
        # (B*M, Dh, Nq, P)
        reads = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        a = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(b * m, 1, nq, n_points)  # (B*M, 1, Nq, P)
        out = out + (reads * a).sum(-1)
    return out.view(b, m * dh, nq).transpose(1, 2)  # (B, Nq, M*Dh)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with learned offsets and weights (Deformable DETR's module).

    Args:
        embed_dim: C of queries, input values and the output.
        num_levels: L, value levels.
        num_heads: M.
        num_points: P, sampling points per head and level.
        value_dim: channels the values are projected to before sampling (``embed_dim`` when None); ViT-Adapter
            uses a fraction of ``embed_dim`` to save memory. Must divide by ``num_heads``.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        value_dim = embed_dim if value_dim is None else value_dim
        if min(embed_dim, num_levels, num_heads, num_points, value_dim) <= 0:
            raise ValueError(
                f"MSDeformAttn sizes must be positive (embed_dim={embed_dim}, num_levels={num_levels}, "
                f"num_heads={num_heads}, num_points={num_points}, value_dim={value_dim})."
            )
        if value_dim % num_heads:
            raise ValueError(f"value_dim={value_dim} must be divisible by num_heads={num_heads}.")
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, value_dim)
        self.output_proj = nn.Linear(value_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's start: every head looks in its own direction, points at growing distances, with
        uniform weights; the offsets and weights start independent of the query (zero weight matrices)."""
        m, n_levels, n_points = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(m, dtype=torch.float64) * (2.0 * math.pi / m)
        direction = torch.stack([theta.cos(), theta.sin()], -1)  # (M, 2)
        # Scale so the longer component is 1: the first point sits one pixel away on a square ring.
        direction = direction / direction.abs().max(-1, keepdim=True).values
        distance = torch.arange(1, n_points + 1, dtype=torch.float64).view(1, 1, n_points, 1)
        bias = direction.view(m, 1, 1, 2) * distance  # (M, 1, P, 2)
        bias = bias.expand(m, n_levels, n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to points around its reference point on every level.

        Args:
            query: (B, Nq, C).
            reference_points: (B, Nq, L, 2) (x, y) in [0, 1] of each level; offsets are measured in that
                level's pixels (normalised by its W_l, H_l).
            value: (B, Nv, C), levels flattened row-major and concatenated.
            spatial_shapes: (L, 2) long (H_l, W_l).
            level_start_index: (L,) long, where each level starts in Nv (checked against ``spatial_shapes``).
            value_padding_mask: (B, Nv) bool, True at padded value tokens (they read as zero), or None.

        Returns:
            (B, Nq, C).
        """
        b, nq, _ = query.shape
        nv = value.shape[1]
        n_levels, m, n_points = self.num_levels, self.num_heads, self.num_points
        self._check_inputs(
            query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask
        )

        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(b, nv, m, self.value_dim // m)  # (B, Nv, M, Dh)

        offsets = self.sampling_offsets(query).view(b, nq, m, n_levels, n_points, 2)
        weights = self.attention_weights(query).view(b, nq, m, n_levels * n_points).softmax(-1)
        weights = weights.view(b, nq, m, n_levels, n_points)
        # Offsets are in level pixels: divide by (W_l, H_l) to move in normalised coordinates.
        size_xy = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / size_xy[None, None, None, :, None, :]
        out = ms_deform_attn_core(v, spatial_shapes, locations, weights)  # (B, Nq, value_dim)
        return self.output_proj(out)

    def _check_inputs(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        value_padding_mask: Tensor | None,
    ) -> None:
        b, nq, c = query.shape
        if c != self.embed_dim or value.shape[-1] != self.embed_dim:
            raise ValueError(
                f"query has {c} and value {value.shape[-1]} channels; this MSDeformAttn expects "
                f"embed_dim={self.embed_dim} for both."
            )
        if tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(
                f"spatial_shapes has shape {tuple(spatial_shapes.shape)}; expected ({self.num_levels}, 2) "
                "(H, W) per level for this module's num_levels."
            )
        if tuple(reference_points.shape) != (b, nq, self.num_levels, 2):
            raise ValueError(
                f"reference_points has shape {tuple(reference_points.shape)}; expected "
                f"(B, Nq, L, 2) = {(b, nq, self.num_levels, 2)}. Expand a per-query point over levels."
            )
        sizes = spatial_shapes.prod(-1)
        if int(sizes.sum()) != value.shape[1] or value.shape[0] != b:
            raise ValueError(
                f"value has shape {tuple(value.shape)} but spatial_shapes {spatial_shapes.tolist()} give "
                f"{int(sizes.sum())} tokens for batch {b}; flatten every level into Nv."
            )
        starts = level_offsets(spatial_shapes)
        if not torch.equal(level_start_index.to(starts), starts):
            raise ValueError(
                f"level_start_index {level_start_index.tolist()} disagrees with spatial_shapes "
                f"(expected {starts.tolist()})."
            )
        if value_padding_mask is not None and tuple(value_padding_mask.shape) != tuple(value.shape[:2]):
            raise ValueError(
                f"value_padding_mask has shape {tuple(value_padding_mask.shape)}; expected (B, Nv) = "
                f"{tuple(value.shape[:2])}."
            )
