"""Multi-scale deformable attention against a point-by-point bilinear reference written here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from omtseg.modeling.ops.ms_deform_attn import (
    MSDeformAttn,
    flatten_levels,
    level_offsets,
    ms_deform_attn_core,
    pixel_centers,
)

SHAPES = [(7, 5), (3, 4), (1, 3)]  # odd, non-square levels, one a single row


def _bilinear_zero_pad(img: Tensor, x: float, y: float) -> Tensor:
    """Read (Dh, H, W) ``img`` at pixel coordinates (x, y) (pixel centres at integers), zero outside."""
    _, h, w = img.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            weight = (1.0 - abs(x - xx)) * (1.0 - abs(y - yy))
            out += weight * img[:, yy, xx]
    return out


def _reference_core(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    b, _, m, dh = value.shape
    _, nq, _, n_levels, n_points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, nq, m, dh, dtype=value.dtype)
    for bi in range(b):
        for q in range(nq):
            for mi in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl] : starts[lvl + 1], mi].T.reshape(dh, h, w)
                    for p in range(n_points):
                        u, v = locations[bi, q, mi, lvl, p].tolist()
                        # align_corners=False: normalised u covers pixel edges, centres sit at u*W - 0.5.
                        read = _bilinear_zero_pad(img, u * w - 0.5, v * h - 0.5)
                        out[bi, q, mi] += weights[bi, q, mi, lvl, p] * read
    return out.reshape(b, nq, m * dh)


def _random_inputs(b: int, nq: int, m: int, dh: int, n_points: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    nv = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, nv, m, dh, generator=g, dtype=dtype)
    # Spread points past the borders so zero padding and partial corners are exercised.
    locations = torch.rand(b, nq, m, len(SHAPES), n_points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(b, nq, m, len(SHAPES), n_points, generator=g, dtype=dtype)
    return value, locations, weights


def test_core_matches_pointwise_bilinear_reference() -> None:
    value, locations, weights = _random_inputs(2, 5, 2, 3, 3, torch.float32)
    shapes = torch.tensor(SHAPES)
    ours = ms_deform_attn_core(value, shapes, locations, weights)
    ref = _reference_core(value.double(), SHAPES, locations.double(), weights.double())
    assert ours.shape == (2, 5, 6)
    assert (ours.double() - ref).abs().max().item() < 1e-5


def test_core_gradcheck_float64() -> None:
    value, locations, weights = _random_inputs(1, 2, 2, 2, 2, torch.float64)
    shapes = torch.tensor(SHAPES)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, s, a: ms_deform_attn_core(v, shapes, s, a), inputs)


def test_core_no_queries() -> None:
    value, locations, weights = _random_inputs(2, 0, 2, 3, 3, torch.float32)
    assert ms_deform_attn_core(value, torch.tensor(SHAPES), locations, weights).shape == (2, 0, 6)


def _module_inputs(b: int, nq: int, c: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(b, c, h, w, generator=g) for h, w in SHAPES]
    tokens, shapes, starts = flatten_levels(maps)
    query = torch.randn(b, nq, c, generator=g)
    ref = torch.rand(b, nq, len(SHAPES), 2, generator=g)
    return query, ref, tokens, shapes, starts


def test_module_shapes_and_gradients() -> None:
    attn = MSDeformAttn(embed_dim=24, num_levels=3, num_heads=3, num_points=2, value_dim=12)
    # Move off the zero init so every projection's gradient path is live.
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1)
    query, ref, tokens, shapes, starts = _module_inputs(2, 9, 24)
    query.requires_grad_()
    tokens.requires_grad_()
    out = attn(query, ref, tokens, shapes, starts)
    assert out.shape == (2, 9, 24)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert query.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
    assert attn(query[:, :0], ref[:, :0], tokens, shapes, starts).shape == (2, 0, 24)


def test_offsets_move_in_level_pixels() -> None:
    # One head, one point, identity projections: a (+1, -1) pixel offset from a pixel centre reads the
    # neighbour to the right and above, on a level whose H and W differ.
    h, w, c = 5, 7, 4
    attn = MSDeformAttn(embed_dim=c, num_levels=1, num_heads=1, num_points=1)
    with torch.no_grad():
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(c))
            lin.bias.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, -1.0]))
    fmap = torch.randn(1, c, h, w)
    tokens, shapes, starts = flatten_levels([fmap])
    ref = pixel_centers(shapes)[None, :, None, :]  # (1, Nv, 1, 2)
    out = attn(tokens, ref, tokens, shapes, starts)  # (1, H*W, C)
    out = out.transpose(1, 2).reshape(1, c, h, w)
    expected = torch.zeros_like(fmap)
    expected[:, :, 1:, :-1] = fmap[:, :, :-1, 1:]
    assert torch.allclose(out, expected, atol=1e-5)


def test_init_follows_deformable_detr() -> None:
    attn = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right, head 1 up (+y), at distances 1, 2, 3 pixels on every level.
    assert torch.allclose(bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]), atol=1e-6)
    assert torch.allclose(bias[1, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0


def test_value_padding_mask_hides_tokens() -> None:
    attn = MSDeformAttn(embed_dim=8, num_levels=3, num_heads=2, num_points=2)
    query, ref, tokens, shapes, starts = _module_inputs(2, 6, 8)
    mask = torch.zeros(tokens.shape[:2], dtype=torch.bool)
    mask[0, 10:30] = True
    changed = tokens.clone()
    changed[mask] = 100.0
    a = attn(query, ref, tokens, shapes, starts, value_padding_mask=mask)
    b = attn(query, ref, changed, shapes, starts, value_padding_mask=mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, attn(query, ref, changed, shapes, starts), atol=1e-3)


def test_helpers_layout() -> None:
    shapes = torch.tensor(SHAPES)
    assert level_offsets(shapes).tolist() == [0, 35, 47]
    centers = pixel_centers(shapes)
    assert centers.shape == (50, 2)
    assert torch.allclose(centers[0], torch.tensor([0.5 / 5, 0.5 / 7]))  # (x, y) of the first pixel
    assert torch.allclose(centers[35 + 5], torch.tensor([1.5 / 4, 1.5 / 3]))  # level 1, row 1, col 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_heads": 3, "value_dim": 16}, "divisible"),
        ({"num_points": 0}, "positive"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MSDeformAttn(embed_dim=16, **kwargs)


def test_bad_inputs_raise() -> None:
    attn = MSDeformAttn(embed_dim=8, num_levels=3, num_heads=2, num_points=2)
    query, ref, tokens, shapes, starts = _module_inputs(1, 4, 8)
    with pytest.raises(ValueError, match="flatten every level"):
        attn(query, ref, tokens[:, 1:], shapes, starts)
    with pytest.raises(ValueError, match="reference_points"):
        attn(query, ref[:, :, :1], tokens, shapes, starts)
    with pytest.raises(ValueError, match="level_start_index"):
        attn(query, ref, tokens, shapes, starts + 1)
    with pytest.raises(ValueError, match="spatial_shapes"):
        attn(query, ref, tokens, shapes[:2], starts[:2])
