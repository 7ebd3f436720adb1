"""BEiT-3 backbone: parity with torchscale 0.3.0, checkpoint loading, shapes, gradients, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _beit3_reference import randomize_, save_official, torchscale_beit3

from omtseg.modeling.backbone.beit3 import (
    BEiT3,
    beit3_tiny,
    checkpoint_filter_fn,
    load_beit3_checkpoint,
    resample_vision_positions,
)
from omtseg.modeling.backbone.multiway import Multiway, drop_path

# (embed_dim, depth, num_heads, img_size, vocab_size): our tiny preset, and base width with 2 blocks
# (a small text table keeps the file light; the table size does not change the computation).
PARITY_CONFIGS = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=4, img_size=48, vocab_size=64010),
    "base-width": dict(embed_dim=768, depth=2, num_heads=12, img_size=32, vocab_size=1000),
}


def _pair(tmp_path: Path, name: str) -> tuple[torch.nn.Module, BEiT3, dict]:
    cfg = PARITY_CONFIGS[name]
    ref = randomize_(torchscale_beit3(**cfg)).eval()
    path = save_official(ref, tmp_path / f"{name}.pth", extra={"mlm_head.weight": torch.zeros(4, 4)})
    ours = BEiT3(**cfg).eval()
    load_beit3_checkpoint(ours, path)
    return ref, ours, cfg


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_parity_with_torchscale(tmp_path: Path, name: str) -> None:
    ref, ours, cfg = _pair(tmp_path, name)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, cfg["img_size"], cfg["img_size"], generator=gen)
    ids = torch.randint(0, cfg["vocab_size"], (2, 9), generator=gen)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 5:] = True
    cases = {
        "image": (dict(visual_tokens=image), dict(image=image)),
        "text": (
            dict(textual_tokens=ids, text_padding_position=pad),
            dict(text_ids=ids, text_padding_mask=pad),
        ),
        "image+text": (
            dict(visual_tokens=image, textual_tokens=ids, text_padding_position=pad),
            dict(image=image, text_ids=ids, text_padding_mask=pad),
        ),
    }
    with torch.no_grad():
        for case, (ref_kwargs, our_kwargs) in cases.items():
            expected = ref(**ref_kwargs)["encoder_out"]
            got = ours(**our_kwargs)
            assert got.shape == expected.shape, case
            err = (got - expected).abs().max().item()
            assert err < 1e-5, f"{name}/{case}: max abs error {err:.3g}"
            assert expected.abs().max() > 0.1  # random LayerNorms: outputs are not trivially small


def test_checkpoint_at_other_size_resamples_positions(tmp_path: Path) -> None:
    ref = randomize_(torchscale_beit3(embed_dim=32, depth=1, num_heads=2, img_size=64))
    path = save_official(ref, tmp_path / "ref64.pth")
    official = ref.state_dict()["encoder.embed_positions.A.weight"]  # (3 + 16, D)

    ours = BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=96).eval()  # 6x6 grid
    load_beit3_checkpoint(ours, path)
    table = ours.embed_positions.A.weight
    assert table.shape == (3 + 36, 32)
    torch.testing.assert_close(table[:3], official[:3])  # fairseq rows and CLS kept
    assert not torch.allclose(table[3:7], official[3:7])
    # The resampled grid is a smooth version of the source: its mean stays close.
    torch.testing.assert_close(table[3:].mean(0), official[3:].mean(0), atol=0.1, rtol=0)
    out = ours(image=torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 37, 32) and torch.isfinite(out).all()

    # Resampling at load time and at run time (a 64 px model fed 96 px images) agree.
    same = BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=64).eval()
    load_beit3_checkpoint(same, path)
    image = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(same(image=image), ours(image=image))


def test_resample_keeps_prefix_and_identity() -> None:
    table = torch.randn(3 + 9, 8)
    assert resample_vision_positions(table, (3, 3)) is table
    out = resample_vision_positions(table, (2, 5))
    assert out.shape == (3 + 10, 8)
    torch.testing.assert_close(out[:3], table[:3])
    with pytest.raises(ValueError, match="not a square"):
        resample_vision_positions(torch.randn(3 + 8, 8), (2, 2))


def test_filter_strips_heads_and_renames() -> None:
    model = BEiT3(embed_dim=16, depth=1, num_heads=2, img_size=32, vocab_size=10)
    ref = torchscale_beit3(embed_dim=16, depth=1, num_heads=2, img_size=32, vocab_size=10)
    official = {"beit3." + k: v for k, v in ref.state_dict().items()}
    official["language_head.weight"] = torch.zeros(2)  # a task head
    official["beit3.encoder.output_projection.weight"] = torch.zeros(2)  # the pre-training LM head
    filtered = checkpoint_filter_fn({"model": official}, model)
    assert set(filtered) == set(model.state_dict())
    # Our own state dict passes unchanged.
    assert set(checkpoint_filter_fn(model.state_dict(), model)) == set(model.state_dict())


def test_wrong_checkpoint_lists_keys(tmp_path: Path) -> None:
    ref = torchscale_beit3(embed_dim=32, depth=2, num_heads=2, img_size=32, vocab_size=100)
    path = save_official(ref, tmp_path / "two_blocks.pth")
    model = BEiT3(embed_dim=32, depth=3, num_heads=2, img_size=32, vocab_size=120)
    with pytest.raises(ValueError) as info:
        load_beit3_checkpoint(model, path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys [blocks.2." in message
    assert "shape mismatches" in message and "text_embed.weight (100, 32) vs model (120, 32)" in message

    state = {"model": {"beit3.text_embed.weight": torch.zeros(120, 32), "beit3.bogus.weight": torch.zeros(1)}}
    with pytest.raises(ValueError, match="unexpected keys \\[bogus.weight\\]"):
        load_beit3_checkpoint(model, state)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_beit3_checkpoint(model, tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_beit3_checkpoint(model, tmp_path / "junk.pth")


@pytest.mark.parametrize(("height", "width", "length"), [(48, 80, 5), (16, 16, 1), (32, 16, 0)])
def test_shapes_at_odd_sizes(height: int, width: int, length: int) -> None:
    model = beit3_tiny(img_size=32, depth=2).eval()
    image = torch.randn(3, 3, height, width)
    ids = torch.randint(0, 64010, (3, length))
    x, vision_len, mask = model.embed(image=image, text_ids=ids)
    gh, gw = model.patch_grid((height, width))
    assert vision_len == 1 + gh * gw and mask is None
    assert x.shape == (3, vision_len + length, 64)
    assert model(image=image, text_ids=ids).shape == (3, vision_len + length, 64)
    assert model(image=image).shape == (3, vision_len, 64)
    if length:
        assert model(text_ids=ids).shape == (3, length, 64)


def test_pieces_compose_to_forward() -> None:
    """The adapter runs embed -> blocks -> final_norm itself; that must equal forward."""
    model = beit3_tiny(img_size=32, depth=2).eval()
    image, ids = torch.randn(2, 3, 32, 48), torch.randint(0, 64010, (2, 6))
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    with torch.no_grad():
        x, vision_len, mask = model.embed(image=image, text_ids=ids, text_padding_mask=pad)
        assert mask is not None and mask.shape == (2, vision_len + 6) and not mask[:, :vision_len].any()
        for block in model.blocks:
            x = block(x, vision_len=vision_len, padding_mask=mask)
        torch.testing.assert_close(model.final_norm(x, vision_len), model(image, ids, pad))


def test_text_inputs_are_interchangeable() -> None:
    model = beit3_tiny(img_size=32, depth=1).eval()
    image, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 64010, (1, 7))
    with torch.no_grad():
        base = model(image=image, text_ids=ids.expand(2, -1))
        torch.testing.assert_close(model(image=image, text_ids=ids), base)  # a batch of 1 is shared
        torch.testing.assert_close(model(image=image, text_ids=ids[0]), base)
        torch.testing.assert_close(model(image=image, text_embeds=model.text_embed(ids)), base)
        torch.testing.assert_close(model(image=image, text_ids=ids, text_positions=torch.arange(7)), base)
        # Positions index the text table after the fairseq offset of 2.
        positions = torch.tensor([0, 1, 2, 0, 1, 0, 5])
        x, vision_len, _ = model.embed(text_ids=ids, text_positions=positions)
        expected = model.text_embed(ids) + model.embed_positions.B.weight[positions + 2]
        torch.testing.assert_close(x, expected)
        assert vision_len == 0


def test_padding_really_masks() -> None:
    model = beit3_tiny(img_size=32, depth=2).eval()
    image = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 64000, (2, 8))
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[:, 5:] = True
    other = ids.clone()
    other[:, 5:] = torch.randint(4, 64000, (2, 3))
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 64000
    with torch.no_grad():
        out = model(image=image, text_ids=ids, text_padding_mask=pad)
        same = model(image=image, text_ids=other, text_padding_mask=pad)
        torch.testing.assert_close(same, out, rtol=0, atol=0)
        moved = model(image=image, text_ids=changed, text_padding_mask=pad)
        assert not torch.allclose(moved[:, :5], out[:, :5])


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = beit3_tiny(img_size=32, depth=2, drop_path_rate=0.1).train()
    image = torch.randn(2, 3, 32, 48)
    masked = torch.zeros(2, 6, dtype=torch.bool)
    masked[:, :2] = True
    ids = torch.randint(0, 64010, (2, 5))
    out = model(image=image, text_ids=ids, vision_masked_position=masked)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name != "text_embed.weight":
            assert p.grad.abs().sum() > 0, name
    assert model.text_embed.weight.grad[ids.flatten()].abs().sum() > 0


def test_activation_checkpointing_matches() -> None:
    torch.manual_seed(0)
    plain = beit3_tiny(img_size=32, depth=2).train()
    ckpt = beit3_tiny(img_size=32, depth=2, activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 64010, (2, 4))
    grads = []
    for model in (plain, ckpt):
        x = image.clone().requires_grad_(True)
        model(image=x, text_ids=ids).sum().backward()
        grads.append((x.grad, model.blocks[0].ffn.B.fc1.weight.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_user_errors() -> None:
    model = beit3_tiny(img_size=32, depth=1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(image=torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="needs an image"):
        model()
    with pytest.raises(ValueError, match="either text_ids or text_embeds"):
        model(text_ids=torch.zeros(1, 2, dtype=torch.long), text_embeds=torch.zeros(1, 2, 64))
    with pytest.raises(ValueError, match="Text positions"):
        model(text_ids=torch.zeros(1, 2, dtype=torch.long), text_positions=torch.tensor([0, 1022]))
    with pytest.raises(ValueError, match=r"got \[0, 1022\]"):
        model(text_ids=torch.zeros(1, 1023, dtype=torch.long))  # 1022 text positions at most
    with pytest.raises(ValueError, match="2 images but 3 texts"):
        model(image=torch.randn(2, 3, 32, 32), text_ids=torch.zeros(3, 2, dtype=torch.long))


def _perturb_experts(block: torch.nn.Module, expert: str) -> None:
    for module in block.modules():
        if isinstance(module, Multiway):
            for p in getattr(module, expert).parameters():
                p.add_(torch.randn_like(p))


@pytest.mark.parametrize(("expert", "vision_len"), [("B", 7), ("A", 0)])
def test_experts_follow_vision_len(expert: str, vision_len: int) -> None:
    """An image-only call (vision_len = N) never uses the B experts, a text-only one never the A experts."""
    block = beit3_tiny(depth=1).blocks[0].eval().requires_grad_(False)
    x = torch.randn(2, 7, 64)
    before = block(x, vision_len=vision_len)
    mixed = block(x, vision_len=3)
    _perturb_experts(block, expert)
    torch.testing.assert_close(block(x, vision_len=vision_len), before)
    assert not torch.allclose(block(x, vision_len=3), mixed)


def test_drop_path_drops_whole_samples() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 3, 2)
    out = drop_path(x, 0.5, training=True)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54
    assert drop_path(x, 0.5, training=False) is x
