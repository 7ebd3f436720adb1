"""The "no visual adapter" ablation: a ViTDet-style simple feature pyramid on BEiT-3's last layer.

BEiT-3 runs unchanged; its final patch states (stride 16) are resampled to strides 4 (two stride-2 transposed
convs), 8 (one), 16 (as is) and 32 (2x2 max pool), then each level is projected to C channels by a 1x1 and a
3x3 conv, each followed by a norm, as ViTDet does. A trunk with other patches (8 px, the world's tiny
trunk) has its grid resized to stride 16 first (bilinear), so the pyramid is the same.

Shape letters: B batch, D BEiT-3 width, C output channels, L text tokens, H, W image pixels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .adapter import init_adapter_weights
from .backbone.beit3 import BEiT3
from .backbone.entry_attention import EntryLayout
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
from .shapes import BackboneOutput, ShapeSpec


class SimplePyramid(nn.Module):
    """Frozen BEiT-3 + deconv/pool pyramid -> ``f1..f4``, with the same outputs as the visual adapter.

    Args:
        backbone: the BEiT-3 encoder; frozen here (see :func:`~omtseg.modeling.frozen_trunk.freeze`).
        norm: norm after the convs: "group" or "batch".
        out_channels: C of the outputs; None keeps the BEiT-3 width D.
        cross_modal: text and patches share the blocks (True) or text is encoded alone (False).
        freeze_position_embeddings: freeze BEiT-3's position tables too.
    """

    def __init__(
        self,
        *,
        backbone: BEiT3,
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
        d, c = backbone.embed_dim, self.out_channels
        half, quarter = max(1, d // 2), max(1, d // 4)
        # Widths shrink as resolution grows (ViTDet): the stride-4 map is the costly one.
        self.resample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(d, half, 2, 2),
                    norm_2d(norm, half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, 2, 2),
                ),
                nn.ConvTranspose2d(d, half, 2, 2),
                nn.Identity(),
                nn.MaxPool2d(2, 2),
            ]
        )
        widths = (quarter, half, d, d)
        self.project = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(w, c, 1, bias=False),
                norm_2d(norm, c),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                norm_2d(norm, c),
            )
            for w in widths
        )
        init_adapter_weights(self.resample)
        init_adapter_weights(self.project)

    def train(self, mode: bool = True) -> SimplePyramid:
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
        """Multi-scale features ``f1..f4`` and, with text, the text states: the inputs and outputs of
        :meth:`omtseg.modeling.adapter.VisualAdapter.forward`, so either wrapper serves the segmenter."""
        _, _, h, w = images.shape
        text_input = dict(
            text_embeds=text_embeds, text_positions=text_positions, text_padding_mask=text_padding_mask
        )
        joint_mask = attn_mask if self.cross_modal else None
        x, vision_len, padding_mask = trunk_input(
            self.backbone, images, cross_modal=self.cross_modal, **text_input
        )
        for block in self.backbone.blocks:
            x = block(x, vision_len=vision_len, padding_mask=padding_mask, attn_mask=joint_mask)
        patches = self.backbone.final_norm.A(x[:, 1:vision_len])  # (B, Np, D), the vision expert's norm
        p = self.backbone.patch_size
        grid = patches.transpose(1, 2).unflatten(2, (h // p, w // p))  # (B, D, H/p, W/p)
        if p != 16:
            grid = F.interpolate(grid, (h // 16, w // 16), mode="bilinear", align_corners=False)
        levels = [proj(resample(grid)) for resample, proj in zip(self.resample, self.project, strict=True)]
        text = text_states(
            self.backbone, x, vision_len, cross_modal=self.cross_modal, attn_mask=attn_mask, **text_input
        )
        return BackboneOutput(features=dict(zip(STRIDES, levels, strict=True)), text=text)
