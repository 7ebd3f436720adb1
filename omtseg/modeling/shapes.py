"""What a backbone promises its head: channels and stride of each output level."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ShapeSpec:
    """One feature level of a backbone output.

    Attributes:
        channels: C of the level's (B, C, H/stride, W/stride) map.
        stride: input pixels per feature pixel (4, 8, 16, 32).
    """

    channels: int
    stride: int

    def __post_init__(self) -> None:
        if self.channels <= 0 or self.stride <= 0:
            raise ValueError(f"ShapeSpec needs positive channels and stride, got {self}.")


@dataclass
class BackboneOutput:
    """What the backbone wrappers (:class:`~omtseg.modeling.adapter.VisualAdapter`, ``SimplePyramid``) return.

    Attributes:
        features: ``"f1".."f4"`` -> (B, C, H/s, W/s) maps at strides s = 4, 8, 16, 32.
        text: (B, L, D) final-normed BEiT-3 states of the text tokens (padding positions hold junk that
            the padding mask marks), or None when no text was given.
    """

    features: dict[str, Tensor]
    text: Tensor | None
