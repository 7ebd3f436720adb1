"""Open-vocabulary masked-attention decoder: shapes, masked attention, text padding, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from omtseg.modeling.transformer_decoder import DecoderLayer, OpenVocabDecoder, attention_mask


def tiny_decoder(**kw: int) -> OpenVocabDecoder:
    args = dict(
        in_channels=24,
        hidden_dim=32,
        num_queries=6,
        num_heads=4,
        dim_feedforward=48,
        num_layers=4,
        mask_dim=16,
        text_dim=20,
    )
    args.update(kw)
    return OpenVocabDecoder(**args)


def inputs(b: int = 2, p: int = 5) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    multi_scale = [torch.randn(b, 24, 3, 5), torch.randn(b, 24, 5, 9), torch.randn(b, 24, 9, 17)]
    return multi_scale, torch.randn(b, 16, 17, 33), torch.randn(b, p, 20)


def test_shapes_at_odd_sizes_and_deep_supervision() -> None:
    torch.manual_seed(0)
    dec = tiny_decoder()
    ms, mask_features, text = inputs()
    pred = dec(ms, mask_features, text)
    assert pred.class_logits.shape == (2, 6, 5)
    assert pred.objectness_logits.shape == (2, 6)
    assert pred.mask_logits.shape == (2, 6, 17, 33)
    assert len(pred.aux) == 4 and all(a.aux == [] for a in pred.aux)  # query init + 3 earlier layers
    assert all(a.class_logits.shape == (2, 6, 5) for a in pred.aux)


def test_class_logits_are_scaled_cosines_with_clamped_scale() -> None:
    torch.manual_seed(1)
    dec = tiny_decoder()
    ms, mask_features, text = inputs()
    pred = dec(ms, mask_features, text)
    assert pred.class_logits.abs().max() <= 1 / 0.07 + 1e-4
    with torch.no_grad():
        dec.logit_scale.fill_(10.0)  # exp(10) would be far above the cap of 100
    pred = dec(ms, mask_features, text)
    assert pred.class_logits.abs().max() <= 100.0 + 1e-3 and pred.class_logits.abs().max() > 1 / 0.07
    assert math.isclose(float(tiny_decoder().logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)


def test_text_padding_is_ignored() -> None:
    torch.manual_seed(2)
    dec = tiny_decoder().eval()
    ms, mask_features, text = inputs(p=4)
    pad = torch.tensor([[False, False, False, True], [False, False, False, False]])
    a = dec(ms, mask_features, text, pad)
    text2 = text.clone()
    text2[0, 3] = 100.0
    b = dec(ms, mask_features, text2, pad)
    torch.testing.assert_close(a.mask_logits[0], b.mask_logits[0])
    torch.testing.assert_close(a.class_logits[0, :, :3], b.class_logits[0, :, :3])
    assert (a.class_logits[0, :, 3] == torch.finfo(torch.float32).min).all()
    # Unpadded, the same entry does change image 0's masks: the check above is not vacuous.
    assert not torch.allclose(a.mask_logits[0], dec(ms, mask_features, text2).mask_logits[0])


def test_attention_mask_blocks_outside_and_frees_empty_queries() -> None:
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # top half
    logits[0, 2] = 5.0  # everywhere
    mask = attention_mask(logits, size=(4, 4), num_heads=2)
    assert mask.shape == (2, 3, 16) and torch.equal(mask[0], mask[1])
    assert not mask[0, 0, :8].any() and mask[0, 0, 8:].all()
    assert not mask[0, 1].any()  # empty mask: attends everywhere
    assert not mask[0, 2].any()


def test_masked_cross_attention_ignores_blocked_memory() -> None:
    torch.manual_seed(3)
    layer = DecoderLayer(dim=16, num_heads=2, dim_feedforward=32).eval()
    x, qpos = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    memory, mpos, text = torch.randn(1, 10, 16), torch.randn(1, 10, 16), torch.randn(1, 3, 16)
    blocked = torch.zeros(2, 1, 10, dtype=torch.bool)
    blocked[:, :, 5:] = True
    out = layer(x, qpos, memory, mpos, blocked, text, None)
    changed = memory.clone()
    changed[:, 5:] += 10.0
    torch.testing.assert_close(layer(x, qpos, changed, mpos, blocked, text, None), out)
    assert not torch.allclose(layer(x, qpos, changed, mpos, blocked.fill_(False), text, None), out)


def test_first_layer_attends_with_the_query_init_masks() -> None:
    torch.manual_seed(4)
    dec = tiny_decoder(num_layers=1)
    seen = {}
    dec.layers[0].image_attn.register_forward_pre_hook(
        lambda _m, _a, kw: seen.update(mask=kw["attn_mask"]), with_kwargs=True
    )
    ms, mask_features, text = inputs()
    pred = dec(ms, mask_features, text)
    expected = attention_mask(pred.aux[0].mask_logits, size=(3, 5), num_heads=4)
    assert torch.equal(seen["mask"], expected)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(5)
    dec = tiny_decoder(in_channels=20)  # exercises the input projections
    ms = [torch.randn(1, 20, 3, 3), torch.randn(1, 20, 5, 6), torch.randn(1, 20, 9, 11)]
    text = torch.randn(1, 3, 20, requires_grad=True)
    pred = dec(ms, torch.randn(1, 16, 9, 11), text)
    loss = sum(
        p.class_logits.sum() + p.objectness_logits.sum() + p.mask_logits.sum() for p in [pred, *pred.aux]
    )
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_fully_padded_image_is_rejected() -> None:
    dec = tiny_decoder()
    ms, mask_features, text = inputs(p=2)
    with pytest.raises(ValueError, match="every prompt entry"):
        dec(ms, mask_features, text, torch.tensor([[True, True], [False, False]]))
