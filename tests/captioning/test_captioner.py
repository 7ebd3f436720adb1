"""The SCA-style segment captioner: masking, shapes, gradients, a prefix-LM training run, decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omtseg.boxes import box_masks
from omtseg.captioning.captioner import SegmentCaptioner, level_masks
from omtseg.captioning.language_model import make_word_level_lm

WORDS = "a large small red blue yellow ball box cone above below left of right".split()
C = 32


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_level_lm(tmp_path_factory.mktemp("lm"), WORDS, width=32, num_heads=2)


def _captioner(lm_dir: Path, **kw: object) -> SegmentCaptioner:
    torch.manual_seed(0)
    args = dict(
        language_model=lm_dir, feature_dim=C, query_dim=24, width=C, num_layers=3, num_heads=2, ffn_dim=64
    )
    args.update(kw)
    return SegmentCaptioner(**args)  # type: ignore[arg-type]


def _features(b: int, sizes: tuple[tuple[int, int], ...] = ((3, 5), (5, 9), (9, 17))) -> list[torch.Tensor]:
    return [torch.randn(b, C, h, w) for h, w in sizes]


def test_box_masks_cover_pixel_centres_and_keep_thin_boxes() -> None:
    m = box_masks(torch.tensor([[1.0, 1.0, 3.0, 2.0], [2.2, 2.2, 2.3, 2.3]]), (4, 5))
    expected0 = torch.zeros(4, 5, dtype=torch.bool)
    expected0[1, 1:3] = True  # centres (1.5, 1.5), (2.5, 1.5) lie in x 1..3, y 1..2
    expected1 = torch.zeros(4, 5, dtype=torch.bool)
    expected1[2, 2] = True  # thinner than a pixel: the pixel holding its centre
    assert torch.equal(m[0], expected0) and torch.equal(m[1], expected1)
    assert box_masks(torch.zeros(0, 4), (3, 7)).shape == (0, 3, 7)


def test_level_masks_keep_small_segments_on_coarse_levels() -> None:
    m = torch.zeros(1, 37, 67, dtype=torch.bool)
    m[0, 20, 40] = True  # one pixel
    coarse = level_masks(m, (3, 5))
    assert coarse.sum() >= 1 and coarse[0, 20 * 3 // 37, 40 * 5 // 67]


def test_prefix_shapes_at_odd_sizes_and_no_segments(lm_dir: Path) -> None:
    cap = _captioner(lm_dir, num_task_tokens=2)
    feats = _features(2)
    masks = torch.zeros(3, 37, 67, dtype=torch.bool)
    masks[0, 3:11, 5:30] = True
    masks[1, 30:, 60:] = True
    prefix = cap.prefix(feats, masks, torch.tensor([1, 0, 1]), torch.randn(3, 24))
    assert prefix.shape == (3, 8 + 2, 32) and torch.isfinite(prefix).all()
    empty = cap.prefix(feats, masks[:0], torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 10, 32)
    ids, mask = cap.tokenize([])
    loss = cap(feats, masks[:0], torch.zeros(0, dtype=torch.long), ids, mask)
    assert loss.item() == 0.0 and loss.requires_grad
    assert cap.generate(feats, masks[:0], torch.zeros(0, dtype=torch.long)) == []


def test_queries_read_only_their_segment(lm_dir: Path) -> None:
    cap = _captioner(lm_dir).eval()
    feats = _features(2, ((4, 4), (8, 8), (16, 16)))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 16:48, 0:16] = True  # aligned with the coarsest cells: cells (1..2, 0) on the 4x4 level
    # segment 1 has an empty mask: it reads the whole image
    index = torch.tensor([1, 1])
    base = cap.prefix(feats, masks, index)
    outside = []
    for f in feats:
        g = f.clone()
        cell = 64 // f.shape[-1]
        keep = masks[0, ::cell, ::cell]  # (h, w) cells of the segment on this level
        g[1][:, ~keep] += 5 * torch.randn_like(g[1][:, ~keep])
        g[0] += 5 * torch.randn_like(g[0])  # the other image does not matter either
        outside.append(g)
    moved = cap.prefix(outside, masks, index)
    torch.testing.assert_close(moved[0], base[0], atol=1e-5, rtol=1e-5)
    assert (moved[1] - base[1]).abs().max() > 1e-3  # the unrestricted segment sees the change
    inside = [f.clone() for f in feats]
    inside[0][1, :, 1, 0] += 5.0
    assert (cap.prefix(inside, masks, index)[0] - base[0]).abs().max() > 1e-3


def test_sca_conditioning_reads_the_whole_image_and_marks_the_region(lm_dir: Path) -> None:
    cap = _captioner(lm_dir, region_conditioning="query").eval()
    feats = _features(1, ((4, 4), (8, 8), (16, 16)))
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 16:48, 0:16] = True
    index = torch.tensor([0])
    base = cap.prefix(feats, masks, index)
    outside = [f.clone() for f in feats]
    outside[0][0, :, 0, 3] += 5.0  # a coarse cell outside the region: the hard mask would not see it
    assert (cap.prefix(outside, masks, index) - base).abs().max() > 1e-3
    # The region still matters through its marked tokens (the marking starts at zero and is learnt).
    with torch.no_grad():
        cap.inside_embed.normal_()
    base = cap.prefix(feats, masks, index)
    other = torch.zeros_like(masks)
    other[0, :16, 48:] = True
    assert (cap.prefix(feats, other, index) - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="region_conditioning"):
        _captioner(lm_dir, region_conditioning="soft")


def test_task_tokens_go_first_or_after_the_visual_prefix(lm_dir: Path) -> None:
    feats, masks = _features(1), torch.ones(2, 16, 16, dtype=torch.bool)
    index = torch.zeros(2, dtype=torch.long)
    after = _captioner(lm_dir, num_task_tokens=6).eval()
    first = _captioner(lm_dir, num_task_tokens=6, task_tokens_first=True).eval()  # SCA's order
    a, f = after.prefix(feats, masks, index), first.prefix(feats, masks, index)
    assert a.shape == f.shape == (2, 8 + 6, 32)
    torch.testing.assert_close(f[:, :6], first.task_tokens.expand(2, -1, -1))
    torch.testing.assert_close(a[:, 8:], after.task_tokens.expand(2, -1, -1))
    torch.testing.assert_close(f[:, 6:], a[:, :8])  # same weights (same seed): the visual part moved
    ids, mask = first.tokenize(["a red ball", "box"])
    assert torch.isfinite(first(feats, masks, index, ids, mask))


def test_label_smoothing_is_the_smoothed_cross_entropy(lm_dir: Path) -> None:
    cap = _captioner(lm_dir).eval()
    feats, masks = _features(1), torch.ones(2, 16, 16, dtype=torch.bool)
    index = torch.zeros(2, dtype=torch.long)
    ids, mask = cap.tokenize(["a red ball", "a small box"])
    prefix = cap.prefix(feats, masks, index)
    inputs = torch.cat([prefix, cap.lm.get_input_embeddings()(ids)], dim=1)
    logits = cap.lm(inputs_embeds=inputs).logits[:, prefix.shape[1] - 1 : -1][mask]  # (N, V)
    log_p = logits.float().log_softmax(-1)
    nll = -log_p.gather(1, ids[mask][:, None]).mean()
    uniform = -log_p.mean()
    with torch.no_grad():
        plain = cap(feats, masks, index, ids, mask)
        smooth = cap(feats, masks, index, ids, mask, label_smoothing=0.1)
    torch.testing.assert_close(plain, nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(smooth, 0.9 * nll + 0.1 * uniform, rtol=1e-5, atol=1e-6)


def test_every_trainable_parameter_gets_a_gradient_and_the_lm_stays_frozen(lm_dir: Path) -> None:
    # layer 0 updates the tokens that layer 3 reads; no query dropout, so query_proj surely gets a gradient
    cap = _captioner(lm_dir, num_layers=4, query_dropout=0.0).train()
    assert not cap.lm.training and not any(p.requires_grad for p in cap.lm.parameters())
    feats = [f.requires_grad_() for f in _features(2)]
    masks = torch.zeros(3, 40, 72, dtype=torch.bool)
    masks[0, :10, :10] = True
    masks[1, 5:30, 20:70] = True
    ids, mask = cap.tokenize(["a red ball", "a small blue box above a cone", "ball"])
    index = torch.tensor([0, 1, 1])
    loss = cap(feats, masks, index, ids, mask, query_embed=torch.randn(3, 24))
    loss = loss + cap(feats, masks[:1], index[:1], ids[:1], mask[:1])  # the no-query path
    loss.backward()
    assert torch.isfinite(loss)
    missing = [
        n
        for n, p in cap.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_query_dropout_swaps_in_the_no_query_token(lm_dir: Path) -> None:
    cap = _captioner(lm_dir, query_dropout=1.0)
    feats, masks, index = (
        _features(1),
        torch.ones(2, 16, 16, dtype=torch.bool),
        torch.zeros(2, dtype=torch.long),
    )
    query = torch.randn(2, 24)
    torch.testing.assert_close(
        cap.train().prefix(feats, masks, index, query), cap.prefix(feats, masks, index)
    )
    assert (
        cap.eval().prefix(feats, masks, index, query) - cap.prefix(feats, masks, index)
    ).abs().max() > 1e-4


def test_unfrozen_language_model_trains(lm_dir: Path) -> None:
    cap = _captioner(lm_dir, freeze_language_model=False).train()
    assert cap.lm.training
    ids, mask = cap.tokenize(["a red ball"])
    cap(_features(1), torch.ones(1, 16, 16, dtype=torch.bool), torch.tensor([0]), ids, mask).backward()
    assert all(p.grad is not None for p in cap.lm.parameters() if p.requires_grad)


def test_padding_does_not_change_the_loss(lm_dir: Path) -> None:
    cap = _captioner(lm_dir).eval()
    feats = _features(1)
    masks = torch.ones(2, 16, 16, dtype=torch.bool)
    ids, mask = cap.tokenize(["a ball", "a small blue box above a cone"])
    both = cap(feats, masks, torch.tensor([0, 0]), ids, mask)
    alone = [
        cap(feats, masks[i : i + 1], torch.tensor([0]), *cap.tokenize([c]))
        for i, c in enumerate(["a ball", "a small blue box above a cone"])
    ]
    # token-level mean: 3 tokens (a ball <eos>) and 8 tokens
    torch.testing.assert_close(both, (3 * alone[0] + 8 * alone[1]) / 11, atol=1e-5, rtol=1e-5)


def _manual_greedy(cap: SegmentCaptioner, prefix: torch.Tensor, steps: int) -> list[list[int]]:
    """Reference: argmax decoding by re-running the LM on the whole sequence each step (no cache)."""
    out = []
    emb = cap.lm.get_input_embeddings()
    for row in prefix:
        seq = row[None]
        ids: list[int] = []
        for _ in range(steps):
            nxt = int(cap.lm(inputs_embeds=seq).logits[0, -1].argmax())
            if nxt == cap.tokenizer.eos_token_id:
                break
            ids.append(nxt)
            seq = torch.cat([seq, emb(torch.tensor([[nxt]]))], dim=1)
        out.append(ids)
    return out


def test_greedy_decoding_matches_a_step_by_step_argmax(lm_dir: Path) -> None:
    cap = _captioner(lm_dir).eval()
    with torch.no_grad():  # a sharper random LM and varied prefixes, so captions differ
        for param in cap.lm.parameters():
            param.normal_(0.0, 0.5)
        torch.nn.init.normal_(cap.to_lm.weight, std=2.0)
    feats = _features(2)
    masks = torch.zeros(3, 24, 40, dtype=torch.bool)
    masks[0, :5] = True
    masks[2, 10:, 30:] = True
    index = torch.tensor([0, 1, 1])
    captions = cap.generate(feats, masks, index, max_new_tokens=6)
    with torch.no_grad():
        expected = _manual_greedy(cap, cap.prefix(feats, masks, index), 6)
    assert captions == [cap.tokenizer.decode(e, skip_special_tokens=True) for e in expected]
    assert len(set(captions)) > 1 and all(len(c.split()) > 1 for c in captions), captions
    assert cap.generate(feats, masks, index, max_new_tokens=6, num_beams=1) == captions


def test_prefix_lm_learns_to_caption_regions(lm_dir: Path) -> None:
    """Three regions of one image, told apart only by their features: the mixer learns their captions.

    The tiny LM is random, so it learns the language alongside (a frozen random GPT-2 predicts a nearly
    uniform distribution whatever its prefix); the LM alone cannot tell the regions apart, the mixer must.
    """
    cap = _captioner(lm_dir, num_layers=2, freeze_language_model=False)
    torch.manual_seed(1)
    feats = _features(1, ((2, 2), (4, 4), (8, 8)))
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, :16, 16:] = True
    masks[2, 16:] = True
    index = torch.zeros(3, dtype=torch.long)
    targets = ["a large red ball", "a small blue box left of a ball", "a yellow cone below a box"]
    ids, mask = cap.tokenize(targets)
    opt = torch.optim.AdamW([p for p in cap.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = cap(feats, masks, index, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
    cap.eval()
    assert cap.generate(feats, masks, index) == targets
    assert cap.generate(feats, masks, index, num_beams=3) == targets


def test_missing_language_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        SegmentCaptioner(language_model=tmp_path / "nope")


def test_bad_arguments_raise(lm_dir: Path) -> None:
    cap = _captioner(lm_dir)
    feats = _features(1)
    masks = torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="feature levels"):
        cap.prefix(feats[:2], masks, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="one batch index per segment"):
        cap.prefix(feats, masks, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="captions for 2 segments"):
        cap(feats, masks, torch.zeros(2, dtype=torch.long), *cap.tokenize(["a ball"]))
    with pytest.raises(ValueError, match="num_beams"):
        cap.generate(feats, masks, torch.zeros(2, dtype=torch.long), num_beams=0)
