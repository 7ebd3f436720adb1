"""Structured per-name attention (EntryLayout) against SDPA with the dense mask it replaces."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from omtseg.modeling import segmenter as segmenter_module
from omtseg.modeling.backbone import entry_attention as entry_module
from omtseg.modeling.backbone.entry_attention import (
    EntryLayout,
    blocked_entry_attention,
    entry_attention,
    flex_entry_attention,
    text_block,
)
from omtseg.modeling.backbone.multiway import MultiwayBlock
from omtseg.modeling.prompts import prompt_attention_mask
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Vocabulary

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "omtseg_tiny.yaml"
MODES = {"per_name": True, "one_way": False}  # mode -> image_attends_text



def random_entry(num_entries: int, seed: int, *, sentinels: bool = False) -> Tensor:
    """(L,) contiguous entry labels of random lengths 1..5 (length-1 entries included); ``sentinels`` adds
    a -1 token at both ends, as the sequential chunks' ``<s>``/``</s>`` (one entry in two pieces)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (num_entries,), generator=g)
    lengths[::3] = 1
    entry = torch.repeat_interleave(torch.arange(num_entries), lengths)
    return torch.cat([torch.tensor([-1]), entry, torch.tensor([-1])]) if sentinels else entry


def dense_sdpa(q: Tensor, k: Tensor, v: Tensor, layout: EntryLayout) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense()[:, None])


def qkv(n: int, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_layout_groups_entries_and_reproduces_the_mask() -> None:
    entry = torch.tensor([-1, 3, 3, 5, 7, 7, 7, -1])
    layout = EntryLayout(2, entry, image_attends_text=True)
    assert layout.group.tolist() == [0, 1, 1, 2, 3, 3, 3, 0] and layout.bounds == (0, 2, 4, 5, 8)
    assert layout.order.tolist() == [0, 7, 1, 2, 3, 4, 5, 6] and not layout.contiguous
    assert layout.order[layout.inverse].tolist() == list(range(8))
    assert layout.blocks(3) == [(0, 2), (2, 5), (5, 8)]  # whole entries, <= 3 tokens unless one is longer
    assert layout.blocks(1) == [(0, 2), (2, 4), (4, 5), (5, 8)]
    assert [tuple(m.shape) for m in layout.block_masks(3)] == [(2, 4), (3, 5), (3, 5)]
    for image_attends_text in (True, False):
        lay = EntryLayout(2, entry, image_attends_text)
        reference = prompt_attention_mask(2, entry, image_attends_text=image_attends_text)
        assert torch.equal(lay.dense(), reference)
        text = text_block(lay, 2)
        assert isinstance(text, EntryLayout) and torch.equal(text.dense(), lay.dense()[:, 2:, 2:])
    contiguous = EntryLayout(0, random_entry(7, 0), image_attends_text=False)
    assert contiguous.contiguous and contiguous.num_entries == 7


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vision_len", [0, 7])
@pytest.mark.parametrize("sentinels", [False, True])
@pytest.mark.parametrize("block_tokens", [1, 6, 1000])  # one entry per block, a few, all at once
def test_structured_equals_dense_mask(mode: str, vision_len: int, sentinels: bool, block_tokens: int) -> None:
    layout = EntryLayout(vision_len, random_entry(9, 1, sentinels=sentinels), MODES[mode])
    q, k, v = qkv(layout.size)
    out = blocked_entry_attention(q, k, v, layout, block_tokens=block_tokens)
    ref = dense_sdpa(q, k, v, layout)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    weights = torch.randn_like(ref)  # a loss that weighs every output differently
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_sdpa(dtype: torch.dtype) -> None:
    layout = EntryLayout(7, random_entry(9, 2), image_attends_text=True)
    q, k, v = (t.detach() for t in qkv(layout.size, dtype=dtype))
    out = blocked_entry_attention(q, k, v, layout, block_tokens=4)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=layout.dense()[:, None])
    assert out.dtype == dtype and torch.allclose(out.float(), ref, atol=2e-2)


def test_block_takes_a_layout_through_checkpointing_and_padding() -> None:
    torch.manual_seed(0)
    block = MultiwayBlock(
        embed_dim=16, num_heads=2, mlp_ratio=2.0, drop_path_prob=0.0, eps=1e-5, activation_checkpointing=True
    ).train()
    layout = EntryLayout(5, random_entry(6, 3), image_attends_text=False)
    x = torch.randn(2, layout.size, 16, requires_grad=True)
    out = block(x, vision_len=5, attn_mask=layout)
    ref = block(x, vision_len=5, attn_mask=layout.dense())
    assert torch.allclose(out, ref, atol=1e-5)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(grad, ref_grad, atol=1e-4)
    padding = torch.zeros(2, layout.size, dtype=torch.bool)
    padding[1, -2:] = True  # falls back to the dense mask
    out = block(x, vision_len=5, padding_mask=padding, attn_mask=layout)
    assert torch.allclose(out, block(x, vision_len=5, padding_mask=padding, attn_mask=layout.dense()))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vision_len", [0, 7])
def test_flex_mask_and_eager_flex_match_the_dense_mask(mode: str, vision_len: int) -> None:
    from torch.nn.attention.flex_attention import create_mask

    layout = EntryLayout(vision_len, random_entry(9, 4, sentinels=True), MODES[mode])
    n = layout.size
    assert torch.equal(create_mask(layout.mask_mod(), None, None, n, n, device="cpu")[0], layout.dense())
    q, k, v = (t.detach() for t in qkv(n))
    with torch.no_grad():
        out = flex_entry_attention(q, k, v, layout, compiled=False)  # eager flex on CPU: forward only
    assert torch.allclose(out, dense_sdpa(q, k, v, layout), atol=1e-5)


def test_a_failing_flex_falls_back_to_blocked_sdpa_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where flex_attention cannot run (no triton, a compile error), one warning, then the exact SDPA path."""
    calls = []

    def broken_flex(*args: Any, **kw: Any) -> Tensor:
        calls.append(1)
        raise RuntimeError("Cannot find a working triton installation.\nmore details")

    monkeypatch.setattr(entry_module, "_wants_flex", lambda q: True)  # as a CUDA tensor would
    monkeypatch.setattr(entry_module, "flex_entry_attention", broken_flex)
    monkeypatch.setattr(entry_module, "_flex_failure", None)
    layout = EntryLayout(5, random_entry(6, 5), image_attends_text=True)
    q, k, v = (t.detach() for t in qkv(layout.size))
    with pytest.warns(RuntimeWarning, match="flex_attention failed .RuntimeError: Cannot find a working"):
        out = entry_attention(q, k, v, layout)
    assert torch.allclose(out, dense_sdpa(q, k, v, layout), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second try, no second warning
        out = entry_attention(q, k, v, layout)
    assert torch.allclose(out, dense_sdpa(q, k, v, layout), atol=1e-5)
    assert len(calls) == 1


def tiny_segmenter(**kw: Any) -> OMTSeg:
    """The configured tiny model (random weights), blocks recomputed in backward."""
    torch.manual_seed(0)
    config: dict[str, Any] = yaml.safe_load(TINY_CONFIG.read_text())["model"]["init_args"]
    return OMTSeg(**{**config, "img_size": 64, "activation_checkpointing": True, **kw})


def dense_layout(vision_len: int, entry: Tensor, image_attends_text: bool) -> Tensor:
    return prompt_attention_mask(vision_len, entry, image_attends_text=image_attends_text)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cross_modal", [True, False])
def test_segmenter_with_layout_equals_dense_mask(
    mode: str, cross_modal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_segmenter(text_attention=mode, cross_modal=cross_modal)
    vocab = Vocabulary.from_names(["cat", "tv, monitor, television set", "sky", "a", "brick wall"])
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)

    def run() -> tuple[Tensor, Tensor, Tensor]:
        model._text_cache.clear()
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout draws in both runs
        pred = model.train()(images, vocab)
        (pred.class_logits.square().sum() + pred.mask_logits.mean()).backward()
        assert model.prompts.wls.grad is not None
        return pred.class_logits.detach(), pred.mask_logits.detach(), model.prompts.wls.grad.clone()

    logits, masks, grad = run()
    monkeypatch.setattr(segmenter_module, "EntryLayout", dense_layout)
    ref_logits, ref_masks, ref_grad = run()
    assert torch.allclose(logits, ref_logits, atol=1e-4) and torch.allclose(masks, ref_masks, atol=1e-4)
    assert grad.abs().sum() > 0 and torch.allclose(grad, ref_grad, atol=1e-4, rtol=1e-3)
