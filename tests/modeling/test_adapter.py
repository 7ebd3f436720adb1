"""Visual adapter and simple pyramid around a tiny real BEiT-3: shapes, freezing, cross-modal, padding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from omtseg.modeling.adapter import VisualAdapter, even_groups
from omtseg.modeling.backbone.beit3 import BEiT3, beit3_tiny
from omtseg.modeling.frozen_trunk import encode_text
from omtseg.modeling.shapes import BackboneOutput, ShapeSpec
from omtseg.modeling.simple_pyramid import SimplePyramid

D = 64
POSITION_TABLES = {"backbone.embed_positions.A.weight", "backbone.embed_positions.B.weight"}


def _backbone(**kwargs: object) -> BEiT3:
    torch.manual_seed(0)
    return beit3_tiny(img_size=64, depth=2, vocab_size=100, max_text_positions=40, **kwargs)


def _adapter(**kwargs: object) -> VisualAdapter:
    backbone_kw = kwargs.pop("backbone_kw", {})
    torch.manual_seed(1)
    return VisualAdapter(backbone=_backbone(**backbone_kw), num_heads=4, stem_channels=8, **kwargs)


def _inputs(b: int = 2, h: int = 64, w: int = 96, length: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(b, 3, h, w, generator=g)
    text = torch.randn(b, length, D, generator=g)
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[-1, length // 2 :] = True  # the last text is shorter
    return images, text, mask


def _check_output(out: BackboneOutput, shapes: dict[str, ShapeSpec], b: int, h: int, w: int) -> None:
    assert list(out.features) == ["f1", "f2", "f3", "f4"]
    for name, f in out.features.items():
        spec = shapes[name]
        assert f.shape == (b, spec.channels, h // spec.stride, w // spec.stride), name
        assert torch.isfinite(f).all()


def _perturb_zero_init(model: nn.Module) -> None:
    # Deformable attention starts query-independent (zero offset/weight matrices), so the query norms get no
    # gradient at step 0; move them off zero to see every path.
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("backbone.") and p.abs().sum() == 0:
            with torch.no_grad():
                p.normal_(std=0.02)


@pytest.mark.parametrize(("h", "w"), [(96, 160), (64, 224)])
def test_adapter_shapes_at_odd_sizes(h: int, w: int) -> None:
    adapter = _adapter()
    images, text, mask = _inputs(2, h, w)
    out = adapter(images, text, None, mask)
    _check_output(out, adapter.output_shapes(), 2, h, w)
    assert {s.stride for s in adapter.output_shapes().values()} == {4, 8, 16, 32}
    assert out.text is not None and out.text.shape == (2, 6, D)


def test_adapter_options_and_projection() -> None:
    adapter = _adapter(out_channels=24, norm="batch", add_vit_feature=False, extra_extractors=False)
    images, _, _ = _inputs(1, 32, 64)
    out = adapter(images)
    assert out.text is None
    assert adapter.output_shapes()["f3"] == ShapeSpec(channels=24, stride=16)
    _check_output(out, adapter.output_shapes(), 1, 32, 64)
    assert len(adapter.extra_extractors) == 0


def test_only_adapter_and_position_tables_get_gradients() -> None:
    adapter = _adapter(init_gamma=0.1)
    _perturb_zero_init(adapter)
    images, text, mask = _inputs()
    out = adapter(images, text, None, mask)
    loss = sum(f.square().mean() for f in out.features.values()) + out.text.square().mean()
    loss.backward()
    with_grad = {n for n, p in adapter.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    adapter_params = {n for n, _ in adapter.named_parameters() if not n.startswith("backbone.")}
    assert with_grad == adapter_params | POSITION_TABLES
    assert {n for n, p in adapter.named_parameters() if p.requires_grad} == adapter_params | POSITION_TABLES


def test_frozen_position_tables_get_no_gradient() -> None:
    adapter = _adapter(freeze_position_embeddings=True)
    images, text, _ = _inputs(1, 64, 64)
    out = adapter(images, text)
    (out.features["f1"].mean() + out.text.mean()).backward()
    assert all(p.grad is None for p in adapter.backbone.parameters())
    assert not POSITION_TABLES & {n for n, p in adapter.named_parameters() if p.requires_grad}


def test_trunk_stays_in_eval_mode() -> None:
    adapter = _adapter(backbone_kw={"drop_path_rate": 0.9}).train()
    assert adapter.training and adapter.spm.training
    assert not any(m.training for m in adapter.backbone.modules())
    images, text, _ = _inputs(1, 32, 64)
    a, b = adapter(images, text), adapter(images, text)  # drop path in the trunk would make these differ
    assert torch.equal(a.text, b.text) and torch.equal(a.features["f3"], b.features["f3"])


def test_zero_gates_leave_beit3_unchanged() -> None:
    # With gamma = 0 the injectors are identities, so the text states are BEiT-3's own joint encoding.
    adapter = _adapter(init_gamma=0.0)
    images, text, mask = _inputs()
    out = adapter(images, text, None, mask)
    full = adapter.backbone(image=images, text_embeds=text, text_padding_mask=mask)
    vision_len = full.shape[1] - text.shape[1]
    keep = ~mask
    assert torch.allclose(out.text[keep], full[:, vision_len:][keep], atol=1e-5)


@pytest.mark.parametrize("cls", [VisualAdapter, SimplePyramid])
def test_cross_modal_switch(cls: type) -> None:
    kw = {"num_heads": 4, "stem_channels": 8} if cls is VisualAdapter else {}
    joint = cls(backbone=_backbone(), cross_modal=True, **kw)
    separate = cls(backbone=_backbone(), cross_modal=False, **kw)
    images, text, mask = _inputs()
    other = images.flip(-1)
    for model, image_aware in ((joint, True), (separate, False)):
        a, b = model(images, text, None, mask), model(other, text, None, mask)
        assert torch.allclose(a.text, b.text, atol=1e-6) != image_aware
        no_text = model(images)
        assert torch.allclose(no_text.features["f2"], a.features["f2"], atol=1e-6) != image_aware
    expected = encode_text(separate.backbone, text, None, mask)
    assert torch.allclose(separate(images, text, None, mask).text, expected)
    # One shared text (batch 1) serves every image.
    assert separate(images, text[:1]).text.shape == (2, 6, D)
    assert joint(images, text[:1]).text.shape == (2, 6, D)


@pytest.mark.parametrize("cross_modal", [True, False])
def test_text_padding_is_ignored(cross_modal: bool) -> None:
    adapter = _adapter(cross_modal=cross_modal)
    images, text, mask = _inputs()
    changed = text.clone()
    changed[mask] = 5.0
    a, b = adapter(images, text, None, mask), adapter(images, changed, None, mask)
    assert torch.allclose(a.text[~mask], b.text[~mask], atol=1e-5)
    assert torch.allclose(a.features["f1"], b.features["f1"], atol=1e-5)
    c = adapter(images, changed)  # without the mask the padding is read
    assert not torch.allclose(a.text[~mask], c.text[~mask], atol=1e-4)


def test_empty_text() -> None:
    adapter = _adapter()
    images, text, _ = _inputs(1, 64, 64)
    out = adapter(images, text[:, :0])
    assert out.text is not None and out.text.shape == (1, 0, D)
    _check_output(out, adapter.output_shapes(), 1, 64, 64)


def test_simple_pyramid_shapes_and_gradients() -> None:
    torch.manual_seed(1)
    pyramid = SimplePyramid(backbone=_backbone(), out_channels=32)
    images, text, mask = _inputs(2, 96, 160)
    out = pyramid(images, text, None, mask)
    _check_output(out, pyramid.output_shapes(), 2, 96, 160)
    assert pyramid.output_shapes()["f1"] == ShapeSpec(channels=32, stride=4)
    (sum(f.square().mean() for f in out.features.values()) + out.text.square().mean()).backward()
    with_grad = {n for n, p in pyramid.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    head_params = {n for n, _ in pyramid.named_parameters() if not n.startswith("backbone.")}
    assert with_grad == head_params | POSITION_TABLES
    # Its text is exactly BEiT-3's joint encoding (nothing touches the trunk).
    full = pyramid.backbone(image=images, text_embeds=text, text_padding_mask=mask)
    assert torch.allclose(out.text[~mask], full[:, -text.shape[1] :][~mask], atol=1e-5)


def test_even_groups() -> None:
    assert even_groups(24) == [(0, 5), (6, 11), (12, 17), (18, 23)]
    assert even_groups(2) == [(0, 0), (1, 1)]
    assert even_groups(6) == [(0, 0), (1, 2), (3, 3), (4, 5)]


def test_bad_inputs_raise() -> None:
    adapter = _adapter()
    with pytest.raises(ValueError, match="multiple of 32"):
        adapter(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="float"):
        adapter(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="interaction_groups"):
        VisualAdapter(backbone=_backbone(), num_heads=4, interaction_groups=[(0, 0), (0, 1)])
    with pytest.raises(ValueError, match="num_heads"):
        VisualAdapter(backbone=_backbone(), num_heads=5)
    with pytest.raises(ValueError, match="patch_size is 12"):
        VisualAdapter(backbone=beit3_tiny(img_size=96, patch_size=12, depth=1, vocab_size=10), num_heads=4)


@pytest.mark.parametrize("cls", [VisualAdapter, SimplePyramid])
def test_8_pixel_patches(cls: type) -> None:
    """The world's tiny trunk has 8-pixel patches: the same pyramid, its features read the finer grid."""
    kw = {"num_heads": 4, "stem_channels": 8} if cls is VisualAdapter else {}
    torch.manual_seed(1)
    model = cls(backbone=_backbone(patch_size=8), out_channels=32, **kw)
    images, text, mask = _inputs(2, 64, 96)
    out = model(images, text, None, mask)
    _check_output(out, model.output_shapes(), 2, 64, 96)
    full = model.backbone(image=images, text_embeds=text, text_padding_mask=mask)
    assert full.shape[1] - text.shape[1] == 1 + (64 // 8) * (96 // 8)  # CLS + an 8 x 12 grid
    if cls is SimplePyramid:  # text untouched by the pyramid: exactly BEiT-3's joint encoding
        assert torch.allclose(out.text[~mask], full[:, -text.shape[1] :][~mask], atol=1e-5)
    # A change inside one 8-pixel patch reaches the output at that place.
    changed = images.clone()
    changed[..., :8, :8] += 3.0
    delta = (model(changed, text, None, mask).features["f2"] - out.features["f2"]).abs().sum(1)
    assert delta[:, :2, :2].mean() > delta[:, 4:, 6:].mean()
