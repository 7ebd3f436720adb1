"""The frozen BEiT-3 trunk inside a dense backbone: functions the wrappers that hold one call.

A dense wrapper (:class:`~omtseg.modeling.adapter.VisualAdapter`, :class:`~omtseg.modeling.simple_pyramid.
SimplePyramid`) holds the BEiT-3 as its ``backbone`` attribute, so its weights are named by that prefix
(``adapter.backbone.*``) for freezing, parameter groups and checkpoint filtering, and calls these functions
for what every wrapper shares: freezing (weights fixed, position tables optionally trainable), the checked
trunk input (image alone, or image and text together), the text states (from the joint pass, or from the
text-only pass of the ``cross_modal=False`` ablation) and the pyramid's output description.

Shape letters: B batch, N tokens, L text tokens, D BEiT-3 width, C channels, H, W pixels.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from .backbone.beit3 import BEiT3
from .backbone.entry_attention import EntryLayout, text_block
from .shapes import ShapeSpec

PATCH_SIZE = 16
"""BEiT-3's patch size (every official checkpoint); the wrappers also take 8 or 32 (any divisor of 32)."""

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


def freeze(backbone: BEiT3, *, freeze_position_embeddings: bool) -> None:
    """Fix the trunk's weights and put it in eval mode (no dropout or drop path).

    The position tables stay trainable, as the official code trains them, unless
    ``freeze_position_embeddings``. The wrapper keeps the trunk in eval mode in its own ``train``.

    Raises:
        ValueError: the trunk's patch size does not divide 32 (images are padded to multiples of 32, and
            the patch grid must tile them exactly).
    """
    if SIZE_DIVISOR % backbone.patch_size:
        raise ValueError(
            f"The dense wrappers need a patch size dividing {SIZE_DIVISOR} (images are padded to multiples "
            f"of {SIZE_DIVISOR}), but the backbone's patch_size is {backbone.patch_size}; use 8, 16 or 32."
        )
    for p in backbone.parameters():
        p.requires_grad_(False)
    if not freeze_position_embeddings:
        for p in backbone.embed_positions.parameters():
            p.requires_grad_(True)
    backbone.eval()


def output_channels(backbone: BEiT3, out_channels: int | None) -> int:
    """C of every pyramid level: ``out_channels``, or the BEiT-3 width D when None."""
    if out_channels is not None and out_channels <= 0:
        raise ValueError(f"out_channels={out_channels} must be positive (or None for the BEiT-3 width).")
    return backbone.embed_dim if out_channels is None else out_channels


def pyramid_shapes(channels: int) -> dict[str, ShapeSpec]:
    """Channels and stride of the pyramid levels ``f1..f4``."""
    return {name: ShapeSpec(channels=channels, stride=s) for name, s in STRIDES.items()}


def encode_text(
    backbone: BEiT3,
    text_embeds: Tensor,
    text_positions: Tensor | None = None,
    text_padding_mask: Tensor | None = None,
    attn_mask: Tensor | EntryLayout | None = None,
) -> Tensor:
    """Text-only BEiT-3 pass (the ``cross_modal=False`` ablation); the result depends on no image.

    Args:
        backbone: the trunk.
        text_embeds: (B, L, D) or (L, D) token embeddings (prompt vectors already substituted).
        text_positions: (B, L) or (L,) long positions, or None for ``0..L-1``.
        text_padding_mask: (B, L) bool, True at padding, or None.
        attn_mask: (B or 1, L, L) bool, True where text token i may attend to token j, an
            :class:`EntryLayout` with ``vision_len`` 0, or None (all).

    Returns:
        (B, L, D) final-normed text states (B = 1 for 2-D ``text_embeds``).
    """
    x, _, padding_mask = backbone.embed(
        text_embeds=text_embeds, text_positions=text_positions, text_padding_mask=text_padding_mask
    )
    for block in backbone.blocks:
        x = block(x, vision_len=0, padding_mask=padding_mask, attn_mask=attn_mask)
    return backbone.final_norm(x, 0)


def trunk_input(
    backbone: BEiT3,
    images: Tensor,
    *,
    cross_modal: bool,
    text_embeds: Tensor | None,
    text_positions: Tensor | None,
    text_padding_mask: Tensor | None,
) -> tuple[Tensor, int, Tensor | None]:
    """Checked images (and text when cross-modal) to trunk input: x (B, N, D), vision_len, padding."""
    check_image_size(images)
    if cross_modal and text_embeds is not None:
        return backbone.embed(
            image=images,
            text_embeds=text_embeds,
            text_positions=text_positions,
            text_padding_mask=text_padding_mask,
        )
    return backbone.embed(image=images)


def text_states(
    backbone: BEiT3,
    x: Tensor,
    vision_len: int,
    *,
    cross_modal: bool,
    text_embeds: Tensor | None,
    text_positions: Tensor | None,
    text_padding_mask: Tensor | None,
    attn_mask: Tensor | EntryLayout | None = None,
) -> Tensor | None:
    """(B, L, D) text states: the joint pass's text tokens, or a separate pass when not cross-modal.

    Args:
        backbone: the trunk.
        x: (B, N, D) the trunk's output tokens of the image pass.
        vision_len: CLS + patch tokens at the front of ``x``.
        cross_modal, text_embeds, text_positions, text_padding_mask: as given to :func:`trunk_input`.
        attn_mask: (B or 1, vision_len + L, vision_len + L) joint attention mask, its :class:`EntryLayout`,
            or None; the separate text pass keeps its text-to-text block.
    """
    if text_embeds is None:
        return None
    if cross_modal:
        return backbone.final_norm(x[:, vision_len:], 0)
    text_mask = None if attn_mask is None else text_block(attn_mask, vision_len)
    text = encode_text(backbone, text_embeds, text_positions, text_padding_mask, text_mask)
    return text.expand(x.shape[0], -1, -1) if text.shape[0] == 1 else text
