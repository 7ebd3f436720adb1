"""Mask2Former's multi-scale deformable-attention pixel decoder.

The three coarsest backbone levels (strides 8, 16, 32) are projected to ``conv_dim``, tagged with sine
positions and a learned level embedding, and refined jointly by a deformable-attention encoder (every pixel of
every level attends to points on all three levels). An FPN step then adds the finer level(s) (stride 4) with
lateral and output convolutions, and a 1x1 convolution gives the stride-4 mask features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.ops.ms_deform_attn import MSDeformAttn, flatten_levels, pixel_centers
from omtseg.modeling.position_encoding import sine_position_encoding
from omtseg.modeling.shapes import ShapeSpec

NUM_ENCODER_LEVELS = 3


def conv_norm(in_ch: int, out_ch: int, *, kernel_size: int, num_groups: int, relu: bool) -> nn.Sequential:
    """Conv (no bias; GroupNorm follows) + GroupNorm (+ ReLU), Xavier-initialised like Mask2Former's convs."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.xavier_uniform_(conv.weight)
    layers: list[nn.Module] = [conv, nn.GroupNorm(num_groups, out_ch)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DeformEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then an FFN (each post-norm)."""

    def __init__(self, *, dim: int, num_levels: int, num_heads: int, num_points: int, dim_feedforward: int):
        super().__init__()
        self.attn = MSDeformAttn(
            embed_dim=dim, num_levels=num_levels, num_heads=num_heads, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor, level_start: Tensor
    ) -> Tensor:
        """x, pos: (B, N, C); reference_points: (B, N, L, 2). Returns (B, N, C)."""
        x = self.norm1(x + self.attn(x + pos, reference_points, x, spatial_shapes, level_start))
        return self.norm2(x + self.ffn(x))


class MSDeformPixelDecoder(nn.Module):
    """Multi-scale pixel decoder built from the backbone's declared output shapes.

    Args:
        input_shapes: channels and stride per backbone key (``f1``..``f4``); at least four levels. The three
            coarsest go through the deformable encoder, the finer ones through the FPN.
        conv_dim: C of every internal and multi-scale output map.
        mask_dim: channels of the mask features.
        num_layers: deformable encoder layers.
        num_heads: deformable attention heads.
        num_points: sampling points per head and level.
        dim_feedforward: encoder FFN width.
        num_groups: GroupNorm groups (must divide ``conv_dim``).
    """

    def __init__(
        self,
        *,
        input_shapes: dict[str, ShapeSpec],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(input_shapes) <= NUM_ENCODER_LEVELS:
            raise ValueError(
                f"The pixel decoder needs more than {NUM_ENCODER_LEVELS} levels (strides 4..32), got "
                f"{sorted(input_shapes)}."
            )
        if conv_dim % num_groups != 0 or conv_dim % 4 != 0:
            raise ValueError(f"conv_dim {conv_dim} must be divisible by num_groups {num_groups} and by 4.")
        by_stride = sorted(input_shapes, key=lambda k: input_shapes[k].stride, reverse=True)
        self.encoder_keys = by_stride[:NUM_ENCODER_LEVELS]  # coarsest first
        self.fpn_keys = by_stride[NUM_ENCODER_LEVELS:]  # coarse to fine
        self.conv_dim = conv_dim
        self.input_proj = nn.ModuleList(
            conv_norm(input_shapes[k].channels, conv_dim, kernel_size=1, num_groups=num_groups, relu=False)
            for k in self.encoder_keys
        )
        self.level_embed = nn.Parameter(torch.randn(NUM_ENCODER_LEVELS, conv_dim) * 0.02)
        self.layers = nn.ModuleList(
            DeformEncoderLayer(
                dim=conv_dim,
                num_levels=NUM_ENCODER_LEVELS,
                num_heads=num_heads,
                num_points=num_points,
                dim_feedforward=dim_feedforward,
            )
            for _ in range(num_layers)
        )
        self.lateral = nn.ModuleList(
            conv_norm(input_shapes[k].channels, conv_dim, kernel_size=1, num_groups=num_groups, relu=False)
            for k in self.fpn_keys
        )
        self.output = nn.ModuleList(
            conv_norm(conv_dim, conv_dim, kernel_size=3, num_groups=num_groups, relu=True)
            for _ in self.fpn_keys
        )
        self.mask_proj = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.xavier_uniform_(self.mask_proj.weight)
        assert self.mask_proj.bias is not None
        nn.init.zeros_(self.mask_proj.bias)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Refine and fuse backbone levels.

        Args:
            features: (B, C_k, H/s_k, W/s_k) per key of ``input_shapes``.

        Returns:
            mask_features (B, mask_dim, H/4, W/4) and three maps (B, conv_dim, H_l, W_l) at strides 32, 16, 8.
        """
        missing = set(self.encoder_keys + self.fpn_keys) - set(features)
        if missing:
            raise ValueError(f"Backbone features lack {sorted(missing)}; got {sorted(features)}.")
        maps = [proj(features[k]) for proj, k in zip(self.input_proj, self.encoder_keys, strict=True)]
        pos = [
            sine_position_encoding(m.shape[-2], m.shape[-1], self.conv_dim, device=m.device, dtype=m.dtype)[
                None
            ]
            + self.level_embed[i].view(1, -1, 1, 1).to(m.dtype)
            for i, m in enumerate(maps)
        ]
        x, spatial_shapes, level_start = flatten_levels(maps)  # (B, N, C)
        pos_tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in pos], dim=1)  # (1, N, C)
        # Every token's reference point is its own pixel centre, on every level (no padding: ratios are 1).
        ref = pixel_centers(spatial_shapes, dtype=x.dtype)[None, :, None, :]  # (1, N, 1, 2)
        ref = ref.expand(x.shape[0], -1, NUM_ENCODER_LEVELS, -1)  # (B, N, L, 2)
        for layer in self.layers:
            x = layer(x, pos_tokens, ref, spatial_shapes, level_start)
        sizes = [h * w for h, w in spatial_shapes.tolist()]
        outs = [
            t.transpose(1, 2).reshape(x.shape[0], self.conv_dim, *m.shape[-2:])  # (B, C, H_l, W_l)
            for t, m in zip(x.split(sizes, dim=1), maps, strict=True)
        ]
        y = outs[-1]
        for key, lateral, output in zip(self.fpn_keys, self.lateral, self.output, strict=True):
            lat = lateral(features[key])
            y = output(lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_proj(y), outs
