"""ViT-Adapter-style visual adapter: a dense multi-scale backbone around the frozen BEiT-3 trunk.

A convolutional spatial prior module (SPM) sees the image at strides 4, 8, 16 and 32. Before each group of
BEiT-3 blocks an *injector* lets the patch tokens read the SPM features (deformable cross-attention, gated by
a learnable per-channel ``gamma`` that starts near zero so the pretrained trunk starts undisturbed); after the
group an *extractor* lets the SPM features read the patch tokens back (deformable cross-attention plus a
depthwise-conv FFN). The SPM features at strides 8/16/32, with a transposed conv adding stride 4, are the
output pyramid. The BEiT-3 blocks run on ``[CLS, patches, text]`` at once, so the class-name tokens see the
image (``cross_modal=True``); only the patch tokens are touched by the adapter.

Shape letters: B batch, D BEiT-3 width, C output channels, L text tokens, H, W image pixels; ``Np`` patch
tokens (stride 16), ``Nc`` SPM tokens (strides 8, 16, 32 concatenated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone.beit3 import BEiT3
from .backbone.entry_attention import EntryLayout
from .backbone.multiway import drop_path
from .frozen_trunk import (
    STRIDES,
    Norm,
    freeze,
    norm_2d,
    output_channels,
    pyramid_shapes,
    text_states,
    trunk_input,
)
from .ops.ms_deform_attn import MSDeformAttn, level_offsets, pixel_centers
from .shapes import BackboneOutput, ShapeSpec


def even_groups(depth: int, num_groups: int = 4) -> list[tuple[int, int]]:
    """Split blocks ``0..depth-1`` into ``min(num_groups, depth)`` contiguous (first, last) groups."""
    n = min(num_groups, depth)
    bounds = [i * depth // n for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


def init_adapter_weights(module: nn.Module) -> None:
    """ViT-Adapter's initialisation for freshly built (non-BEiT-3) modules."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # Deformable attention keeps its own start (direction ring, uniform weights), overwritten above.
    for m in module.modules():
        if isinstance(m, MSDeformAttn):
            m.reset_parameters()


class SpatialPriorModule(nn.Module):
    """Conv stem giving the image's local structure at strides 4, 8, 16, 32.

    Args:
        embed_dim: D, channels of every output.
        stem_channels: width of the stride-4 stem (x2 at stride 8, x4 at 16 and 32).
        norm: norm after each conv.
    """

    def __init__(self, *, embed_dim: int, stem_channels: int = 64, norm: Norm = "group") -> None:
        super().__init__()
        c = stem_channels

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            # conv3x3 -> norm -> ReLU; no conv bias, the norm has one.
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm_2d(norm, cout), nn.ReLU(True)]

        self.stem = nn.Sequential(*conv(3, c, 2), *conv(c, c, 1), *conv(c, c, 1), nn.MaxPool2d(3, 2, 1))
        self.down8 = nn.Sequential(*conv(c, 2 * c, 2))
        self.down16 = nn.Sequential(*conv(2 * c, 4 * c, 2))
        self.down32 = nn.Sequential(*conv(4 * c, 4 * c, 2))
        self.proj = nn.ModuleList(nn.Conv2d(cin, embed_dim, 1) for cin in (c, 2 * c, 4 * c, 4 * c))

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> four maps (B, D, H/s, W/s), s = 4, 8, 16, 32."""
        c4 = self.stem(images)
        c8 = self.down8(c4)
        c16 = self.down16(c8)
        c32 = self.down32(c16)
        return [proj(c) for proj, c in zip(self.proj, (c4, c8, c16, c32), strict=True)]


class ConvFFN(nn.Module):
    """Token FFN with a 3x3 depthwise conv between the linears, applied on each level's own grid."""

    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """(B, N, D) tokens of levels ``shapes`` (H_l, W_l), concatenated row-major -> (B, N, D)."""
        h = self.fc1(x)
        levels = h.split([hh * ww for hh, ww in shapes], dim=1)
        mixed = [
            self.dwconv(t.transpose(1, 2).unflatten(2, hw)).flatten(2).transpose(1, 2)  # (B, H_l*W_l, hidden)
            for t, hw in zip(levels, shapes, strict=True)
        ]
        h = self.dropout(F.gelu(torch.cat(mixed, dim=1)))
        return self.dropout(self.fc2(h))


class Injector(nn.Module):
    """Patch tokens read the SPM features: ``x + gamma * attn(norm(x), norm(c))``."""

    def __init__(
        self, *, dim: int, num_heads: int, num_points: int, value_dim: int, init_gamma: float
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(
            embed_dim=dim, num_levels=3, num_heads=num_heads, num_points=num_points, value_dim=value_dim
        )
        self.gamma = nn.Parameter(torch.full((dim,), init_gamma))

    def forward(self, x: Tensor, ref: Tensor, c: Tensor, shapes: Tensor, starts: Tensor) -> Tensor:
        """x (B, Np, D), ref (B, Np, 3, 2), c (B, Nc, D) -> (B, Np, D)."""
        attn = self.attn(self.query_norm(x), ref, self.feat_norm(c), shapes, starts)
        return x + self.gamma * attn


class Extractor(nn.Module):
    """SPM features read the patch tokens, then a conv FFN; both residual, the FFN with drop path."""

    def __init__(
        self, *, dim: int, num_heads: int, num_points: int, value_dim: int, ffn_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(
            embed_dim=dim, num_levels=1, num_heads=num_heads, num_points=num_points, value_dim=value_dim
        )
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim=dim, hidden_dim=max(1, int(dim * ffn_ratio)))
        self.drop_path = drop_path

    def forward(
        self,
        c: Tensor,
        ref: Tensor,
        x: Tensor,
        shapes: Tensor,
        starts: Tensor,
        c_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """c (B, Nc, D), ref (B, Nc, 1, 2), x (B, Np, D) on grid ``shapes`` (1, 2) -> (B, Nc, D)."""
        c = c + self.attn(self.query_norm(c), ref, self.feat_norm(x), shapes, starts)
        return c + drop_path(self.ffn(self.ffn_norm(c), c_shapes), self.drop_path, self.training)


class VisualAdapter(nn.Module):
    """Frozen BEiT-3 + ViT-Adapter interactions -> pyramid ``f1..f4`` and image-aware text states.

    Args:
        backbone: the BEiT-3 encoder; frozen here (see :func:`~omtseg.modeling.frozen_trunk.freeze`).
        interaction_groups: (first, last) block index of each interaction stage, contiguous and covering
            every block; None splits the blocks into 4 equal groups (BEiT-3 large: (0, 5), (6, 11),
            (12, 17), (18, 23)).
        stem_channels: width of the spatial prior module's stride-4 stem.
        num_heads: deformable-attention heads (ViT-Adapter's BEiT-L setting: 16).
        num_points: sampling points per head and level.
        value_ratio: deformable-attention value width as a fraction of D (saves memory at large D).
        ffn_ratio: hidden width of the extractors' conv FFN as a fraction of D.
        init_gamma: start of the injectors' per-channel gates; small so the pretrained trunk starts
            undisturbed (0 blocks the injector's attention gradients until gamma moves).
        drop_path_rate: drop path of the extractors' FFNs (ViT-Adapter uses the backbone's rate, 0.3 for L).
        extra_extractors: two more extractors after the last stage.
        add_vit_feature: add the stage outputs' patch tokens (resized) to the pyramid levels, the finest
            level taking the earliest stage.
        norm: output norms (and the SPM's): "group" or "batch".
        out_channels: C of the outputs; None keeps D (a 1x1 conv projects otherwise).
        cross_modal: text and patches share the blocks (True) or text is encoded alone (False, the ablation).
        freeze_position_embeddings: freeze BEiT-3's position tables too.
    """

    def __init__(
        self,
        *,
        backbone: BEiT3,
        interaction_groups: Sequence[tuple[int, int]] | None = None,
        stem_channels: int = 64,
        num_heads: int = 16,
        num_points: int = 4,
        value_ratio: float = 0.5,
        ffn_ratio: float = 0.25,
        init_gamma: float = 1e-6,
        drop_path_rate: float = 0.0,
        extra_extractors: bool = True,
        add_vit_feature: bool = True,
        norm: Norm = "group",
        out_channels: int | None = None,
        cross_modal: bool = True,
        freeze_position_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = output_channels(backbone, out_channels)
        freeze(backbone, freeze_position_embeddings=freeze_position_embeddings)
        self.backbone = backbone
        self.cross_modal = cross_modal
        depth, dim = len(backbone.blocks), backbone.embed_dim
        groups = (
            even_groups(depth)
            if interaction_groups is None
            else [(int(a), int(b)) for a, b in interaction_groups]
        )
        expected_starts = [0] + [last + 1 for _, last in groups[:-1]]
        if (
            not groups
            or [g[0] for g in groups] != expected_starts
            or groups[-1][1] != depth - 1
            or any(first > last for first, last in groups)
        ):
            raise ValueError(
                f"interaction_groups={groups} must be contiguous (first, last) block ranges covering blocks "
                f"0..{depth - 1} in order, e.g. {even_groups(depth)}."
            )
        value_dim = int(dim * value_ratio)
        if value_dim <= 0 or value_dim % num_heads:
            raise ValueError(
                f"value_ratio={value_ratio} gives a value width {value_dim} that num_heads={num_heads} does "
                "not divide; pick a ratio or head count that fits the BEiT-3 width."
            )
        self.groups = groups
        self.add_vit_feature = add_vit_feature

        def extractor() -> Extractor:
            return Extractor(
                dim=dim,
                num_heads=num_heads,
                num_points=num_points,
                value_dim=value_dim,
                ffn_ratio=ffn_ratio,
                drop_path=drop_path_rate,
            )

        self.spm = SpatialPriorModule(embed_dim=dim, stem_channels=stem_channels, norm=norm)
        self.level_embed = nn.Parameter(torch.empty(3, dim))
        self.injectors = nn.ModuleList(
            Injector(
                dim=dim,
                num_heads=num_heads,
                num_points=num_points,
                value_dim=value_dim,
                init_gamma=init_gamma,
            )
            for _ in groups
        )
        self.extractors = nn.ModuleList(extractor() for _ in groups)
        self.extra_extractors = nn.ModuleList(extractor() for _ in range(2 if extra_extractors else 0))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList(norm_2d(norm, dim) for _ in STRIDES)
        self.out_proj = None
        if out_channels is not None:
            self.out_proj = nn.ModuleList(nn.Conv2d(dim, out_channels, 1) for _ in STRIDES)
        for module in (self.spm, self.injectors, self.extractors, self.extra_extractors, self.up, self.norms):
            init_adapter_weights(module)
        if self.out_proj is not None:
            init_adapter_weights(self.out_proj)
        nn.init.normal_(self.level_embed)

    def train(self, mode: bool = True) -> VisualAdapter:
        """Set the wrapper's mode; the frozen trunk always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def output_shapes(self) -> dict[str, ShapeSpec]:
        """Channels and stride of ``f1..f4``."""
        return pyramid_shapes(self.out_channels)

    def forward(
        self,
        images: Tensor,
        text_embeds: Tensor | None = None,
        text_positions: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        attn_mask: Tensor | EntryLayout | None = None,
    ) -> BackboneOutput:
        """Multi-scale features of the images and, with text, the text states.

        Args:
            images: (B, 3, H, W) normalised float, H and W multiples of 32.
            text_embeds: (B, L, D) or (1, L, D) prompt token embeddings, or None.
            text_positions: (B, L) or (L,) long text positions, or None for ``0..L-1``.
            text_padding_mask: (B, L) bool, True at padding, or None.
            attn_mask: (B or 1, N, N) bool over the joint tokens (vision then text), True where token i may
                attend to token j, its :class:`EntryLayout`, or None (all); without ``cross_modal`` its text
                block masks the text pass.

        Returns:
            features ``f1..f4`` (B, C, H/s, W/s) and text (B, L, D) or None.
        """
        b, _, h, w = images.shape
        text_input = dict(
            text_embeds=text_embeds, text_positions=text_positions, text_padding_mask=text_padding_mask
        )
        joint_mask = attn_mask if self.cross_modal else None
        x, vision_len, padding_mask = trunk_input(
            self.backbone, images, cross_modal=self.cross_modal, **text_input
        )
        c_maps = self.spm(images)  # strides 4, 8, 16, 32
        c_shapes = [tuple(m.shape[-2:]) for m in c_maps[1:]]
        tokens = [m.flatten(2).transpose(1, 2) + e for m, e in zip(c_maps[1:], self.level_embed, strict=True)]
        c = torch.cat(tokens, dim=1)  # (B, Nc, D)
        patch = self.backbone.patch_size  # 16 for BEiT-3; the tiny world trunk may use 8
        patch_hw = (h // patch, w // patch)
        dev = images.device
        inj_shapes = torch.tensor(c_shapes, dtype=torch.long, device=dev)  # (3, 2)
        ext_shapes = torch.tensor([patch_hw], dtype=torch.long, device=dev)  # (1, 2)
        inj_starts, ext_starts = level_offsets(inj_shapes), level_offsets(ext_shapes)
        # Every query's reference point is its own pixel centre, the same on every level it reads.
        inj_ref = pixel_centers(ext_shapes, dtype=c.dtype)[None, :, None].expand(b, -1, 3, -1)  # (B,Np,3,2)
        ext_ref = pixel_centers(inj_shapes, dtype=c.dtype)[None, :, None].expand(b, -1, 1, -1)  # (B,Nc,1,2)

        stage_patches = []
        for i, (first, last) in enumerate(self.groups):
            patches = self.injectors[i](x[:, 1:vision_len], inj_ref, c, inj_shapes, inj_starts)
            x = torch.cat([x[:, :1], patches, x[:, vision_len:]], dim=1)
            for block in self.backbone.blocks[first : last + 1]:
                x = block(x, vision_len=vision_len, padding_mask=padding_mask, attn_mask=joint_mask)
            patches = x[:, 1:vision_len]  # (B, Np, D)
            last_stage = i == len(self.groups) - 1
            for extractor in [self.extractors[i], *(self.extra_extractors if last_stage else [])]:
                c = extractor(c, ext_ref, patches, ext_shapes, ext_starts, c_shapes)
            stage_patches.append(patches.transpose(1, 2).unflatten(2, patch_hw))  # (B, D, H/p, W/p)

        c_levels = c.split([hh * ww for hh, ww in c_shapes], dim=1)
        c8, c16, c32 = (t.transpose(1, 2).unflatten(2, hw) for t, hw in zip(c_levels, c_shapes, strict=True))
        levels = [self.up(c8) + c_maps[0], c8, c16, c32]
        if self.add_vit_feature:
            n = len(stage_patches)
            for k, f in enumerate(levels):
                vit = stage_patches[k * n // 4]  # with 4 stages, stage k feeds level k
                levels[k] = f + F.interpolate(vit, f.shape[-2:], mode="bilinear", align_corners=False)
        levels = [norm(f) for norm, f in zip(self.norms, levels, strict=True)]
        if self.out_proj is not None:
            levels = [proj(f) for proj, f in zip(self.out_proj, levels, strict=True)]
        text = text_states(
            self.backbone, x, vision_len, cross_modal=self.cross_modal, attn_mask=attn_mask, **text_input
        )
        return BackboneOutput(features=dict(zip(STRIDES, levels, strict=True)), text=text)
