"""What every wrapper that turns the frozen BEiT-3 into a dense backbone shares.

Freezing (weights fixed, trunk kept in eval mode, position tables optionally trainable), the image-size check,
the text-only pass of the ``cross_modal=False`` ablation and the output description. The wrappers are
:class:`~omtseg.modeling.adapter.VisualAdapter` and :class:`~omtseg.modeling.simple_pyramid.SimplePyramid`.

Shape letters: B batch, N tokens, L text tokens, D BEiT-3 width, C channels, H, W pixels.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from .backbone.beit3 import BEiT3
from .shapes import ShapeSpec

Norm = Literal["group", "batch"]
STRIDES = {"f1": 4, "f2": 8, "f3": 16, "f4": 32}
SIZE_DIVISOR = 32
"""Images must be multiples of the coarsest stride so every level is an exact downsampling."""


def norm_2d(kind: Norm, channels: int) -> nn.Module:
    """A 2-D norm: GroupNorm (32 groups, fewer when ``channels`` does not allow) or BatchNorm."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm={kind!r} is not supported; use 'group' or 'batch'.")


def check_image_size(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is (B, 3, H, W) float with H and W multiples of 32."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"Backbone input must be normalised float images (B, 3, H, W), got {images.dtype} "
            f"{tuple(images.shape)}."
        )
    h, w = images.shape[-2:]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR or h == 0 or w == 0:
        raise ValueError(
            f"Image size {h}x{w} is not a positive multiple of {SIZE_DIVISOR}; pad images to a multiple of "
            f"{SIZE_DIVISOR} (the segmenter does) before the backbone."
        )


class FrozenBEiT3Features(nn.Module):
    """Base of the dense wrappers of a frozen BEiT-3: freezing, eval-mode trunk, text-only encoding.

    The trunk's weights are frozen and it stays in eval mode (no dropout or drop path) whatever mode the
    wrapper is in. Its position tables stay trainable, as the official code trains them, unless
    ``freeze_position_embeddings``.

    Args:
        backbone: the BEiT-3 encoder (attribute ``backbone``, so parameter names start with ``backbone.``).
        cross_modal: True runs text and patches through the blocks jointly; False encodes the text in a
            separate text-only pass (:meth:`encode_text`, cacheable per vocabulary) and the image alone.
        freeze_position_embeddings: also freeze the vision and text position tables.
        out_channels: C of every output level; None keeps the BEiT-3 width D.
    """

    def __init__(
        self,
        *,
        backbone: BEiT3,
        cross_modal: bool,
        freeze_position_embeddings: bool,
        out_channels: int | None,
    ) -> None:
        super().__init__()
        if out_channels is not None and out_channels <= 0:
            raise ValueError(f"out_channels={out_channels} must be positive (or None for the BEiT-3 width).")
        if backbone.patch_size != 16:
            raise ValueError(
                f"The dense wrappers place patch tokens at stride 16, but the backbone's patch_size is "
                f"{backbone.patch_size}; use a BEiT-3 with patch_size=16."
            )
        self.backbone = backbone
        self.cross_modal = cross_modal
        self.out_channels = backbone.embed_dim if out_channels is None else out_channels
        for p in backbone.parameters():
            p.requires_grad_(False)
        if not freeze_position_embeddings:
            for p in backbone.embed_positions.parameters():
                p.requires_grad_(True)
        backbone.eval()

    def train(self, mode: bool = True) -> FrozenBEiT3Features:
        """Set the wrapper's mode; the frozen trunk always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def output_shapes(self) -> dict[str, ShapeSpec]:
        """Channels and stride of ``f1..f4``."""
        return {name: ShapeSpec(channels=self.out_channels, stride=s) for name, s in STRIDES.items()}

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters an optimizer should update (adapter modules and position tables)."""
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def encode_text(
        self,
        text_embeds: Tensor,
        text_positions: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Text-only BEiT-3 pass (the ``cross_modal=False`` ablation); the result depends on no image.

        Args:
            text_embeds: (B, L, D) or (L, D) token embeddings (prompt vectors already substituted).
            text_positions: (B, L) or (L,) long positions, or None for ``0..L-1``.
            text_padding_mask: (B, L) bool, True at padding, or None.

        Returns:
            (B, L, D) final-normed text states (B = 1 for 2-D ``text_embeds``).
        """
        x, _, padding_mask = self.backbone.embed(
            text_embeds=text_embeds, text_positions=text_positions, text_padding_mask=text_padding_mask
        )
        for block in self.backbone.blocks:
            x = block(x, vision_len=0, padding_mask=padding_mask)
        return self.backbone.final_norm(x, 0)

    def _embed(
        self,
        images: Tensor,
        text_embeds: Tensor | None,
        text_positions: Tensor | None,
        text_padding_mask: Tensor | None,
    ) -> tuple[Tensor, int, Tensor | None]:
        """Checked images (and text when cross-modal) to trunk input: x (B, N, D), vision_len, padding."""
        check_image_size(images)
        if self.cross_modal and text_embeds is not None:
            return self.backbone.embed(
                image=images,
                text_embeds=text_embeds,
                text_positions=text_positions,
                text_padding_mask=text_padding_mask,
            )
        return self.backbone.embed(image=images)

    def _text_output(
        self,
        x: Tensor,
        vision_len: int,
        batch: int,
        text_embeds: Tensor | None,
        text_positions: Tensor | None,
        text_padding_mask: Tensor | None,
    ) -> Tensor | None:
        """(B, L, D) text states: the joint pass's text tokens, or a separate pass when not cross-modal."""
        if text_embeds is None:
            return None
        if self.cross_modal:
            return self.backbone.final_norm(x[:, vision_len:], 0)
        text = self.encode_text(text_embeds, text_positions, text_padding_mask)
        return text.expand(batch, -1, -1) if text.shape[0] == 1 else text
