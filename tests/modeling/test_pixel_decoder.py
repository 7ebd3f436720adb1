"""Deformable-attention pixel decoder and sine positions: shapes at odd sizes, gradients, errors, parity."""

from __future__ import annotations

import math

import pytest
import torch

from omtseg.modeling.ops.ms_deform_attn import MSDeformAttn
from omtseg.modeling.pixel_decoder import MSDeformPixelDecoder
from omtseg.modeling.position_encoding import sine_position_encoding
from omtseg.modeling.shapes import ShapeSpec

SHAPES = {f"f{i + 1}": ShapeSpec(channels=16 + 8 * i, stride=4 * 2**i) for i in range(4)}


def tiny(**kw: int) -> MSDeformPixelDecoder:
    args = dict(conv_dim=32, mask_dim=24, num_layers=2, num_heads=4, num_points=2, dim_feedforward=48)
    args.update(kw)
    return MSDeformPixelDecoder(input_shapes=SHAPES, **args)


def features(b: int, h: int, w: int) -> dict[str, torch.Tensor]:
    # Backbone maps of an h x w image: ceil division, as strided convolutions with padding give.
    return {
        k: torch.randn(b, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride))
        for k, s in SHAPES.items()
    }


@pytest.mark.parametrize("hw", [(64, 64), (68, 100), (36, 44)])
def test_shapes_at_odd_sizes(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    feats = features(2, *hw)
    mask_features, multi_scale = tiny()(feats)
    assert mask_features.shape == (2, 24, *feats["f1"].shape[-2:])
    assert [tuple(m.shape) for m in multi_scale] == [
        (2, 32, *feats[k].shape[-2:]) for k in ("f4", "f3", "f2")
    ]
    assert torch.isfinite(mask_features).all()


def test_gradients_reach_every_parameter_and_input() -> None:
    torch.manual_seed(1)
    dec = tiny()
    # Deformable attention starts with query-independent offsets and weights (zero matrices), which would
    # hide whether positions and level embeddings reach the queries; give them a little weight.
    for m in dec.modules():
        if isinstance(m, MSDeformAttn):
            torch.nn.init.normal_(m.sampling_offsets.weight, std=0.01)
            torch.nn.init.normal_(m.attention_weights.weight, std=0.01)
    feats = {k: v.requires_grad_() for k, v in features(1, 40, 56).items()}
    mask_features, multi_scale = dec(feats)
    (mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)).backward()
    assert [n for n, p in dec.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in feats.values())


def test_levels_are_ordered_by_stride_not_by_key() -> None:
    shuffled = {"c": SHAPES["f1"], "a": SHAPES["f4"], "d": SHAPES["f2"], "b": SHAPES["f3"]}
    dec = MSDeformPixelDecoder(input_shapes=shuffled, conv_dim=32, mask_dim=8, num_layers=1, num_heads=4)
    assert dec.encoder_keys == ["a", "b", "d"] and dec.fpn_keys == ["c"]


def test_bad_configuration_and_missing_features() -> None:
    with pytest.raises(ValueError, match="backbone|levels"):
        MSDeformPixelDecoder(input_shapes={k: SHAPES[k] for k in ("f2", "f3", "f4")}, conv_dim=32)
    with pytest.raises(ValueError, match="num_groups"):
        MSDeformPixelDecoder(input_shapes=SHAPES, conv_dim=48)
    feats = features(1, 32, 32)
    del feats["f1"]
    with pytest.raises(ValueError, match="f1"):
        tiny()(feats)


def test_sine_positions_match_a_direct_formula() -> None:
    h, w, c = 3, 5, 8
    pos = sine_position_encoding(h, w, c)
    assert pos.shape == (c, h, w)
    half = c // 2
    for y in range(h):
        for x in range(w):
            for i in range(half):
                freq = 10000.0 ** (2 * (i // 2) / half)
                fy, fx = (y + 0.5) / h * 2 * math.pi / freq, (x + 0.5) / w * 2 * math.pi / freq
                trig = math.sin if i % 2 == 0 else math.cos
                assert pos[i, y, x].item() == pytest.approx(trig(fy), abs=1e-5)
                assert pos[half + i, y, x].item() == pytest.approx(trig(fx), abs=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)
