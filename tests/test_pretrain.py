"""BEiT-3-style pre-training: masks, targets, the official-format export, and a short run that learns."""

from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from omtseg.data.corpus import CaptionCorpusDataModule, WorldCorpus
from omtseg.lit_pretrain import PIXEL_MEAN, PIXEL_STD, BEiT3PretrainModule
from omtseg.modeling.backbone.beit3 import BEiT3, load_beit3_checkpoint, official_state_dict
from omtseg.modeling.pretraining import (
    BEiT3Pretrainer,
    contrastive_loss,
    corrupt_text,
    hard_negatives,
    image_text_contrastive,
    image_text_matching,
    mask_patches,
    mask_text,
    patch_thumbnails,
    swap_words,
)
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID
from omtseg.optim import WarmupDecayLR

sys.path.insert(0, str(Path(__file__).parent / "modeling"))
from _beit3_reference import randomize_, torchscale_beit3  # noqa: E402


def test_mask_text_skips_specials_and_padding() -> None:
    ids = torch.tensor([[BOS_ID, 10, 11, 12, 13, EOS_ID], [BOS_ID, 10, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
    pad = ids == PAD_ID
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = mask_text(ids, pad, 0.5, g)
        assert not m[:, 0].any() and not (m & pad).any() and not m[0, 5] and not m[1, 2]
        assert m.sum(1).tolist() == [2, 1]  # half of 4 words; at least one of 1
    with pytest.raises(ValueError, match="at least one token"):
        mask_text(torch.tensor([[BOS_ID, EOS_ID]]), torch.zeros(1, 2, dtype=torch.bool), 0.5)


def test_corrupt_text_follows_the_shares() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 20, (200, 50), generator=g)
    chosen = torch.rand(200, 50, generator=g) < 0.5
    words = torch.tensor([100, 101, 102])
    out = corrupt_text(ids, chosen, keep=0.1, replace=0.1, replacement_ids=words, generator=g)
    assert torch.equal(out[~chosen], ids[~chosen])  # only chosen tokens change
    n = int(chosen.sum())
    masked = int((out[chosen] == MASK_ID).sum())
    replaced = int(torch.isin(out[chosen], words).sum())
    kept = int((out[chosen] == ids[chosen]).sum())
    assert masked + replaced + kept == n
    assert abs(masked / n - 0.8) < 0.03 and abs(replaced / n - 0.1) < 0.03 and abs(kept / n - 0.1) < 0.03
    assert torch.equal(corrupt_text(ids, chosen), ids.masked_fill(chosen, MASK_ID))
    with pytest.raises(ValueError, match="replacement_ids"):
        corrupt_text(ids, chosen, replace=0.1)


def test_mask_patches_count() -> None:
    m = mask_patches(5, 16, 0.4, torch.Generator().manual_seed(1))
    assert m.shape == (5, 16) and m.sum(1).tolist() == [6] * 5
    assert len({tuple(r.tolist()) for r in m}) > 1


def test_patch_thumbnails() -> None:
    images = torch.arange(2 * 3 * 32 * 48, dtype=torch.float).view(2, 3, 32, 48)
    t = patch_thumbnails(images, 16, 4)
    assert t.shape == (2, 6, 48)
    # Patch (row 1, col 2), channel 1, cell (3, 0): mean of the 4x4 pixels it covers.
    expected = images[0, 1, 16 + 12 : 16 + 16, 32:36].mean()
    assert t[0, 1 * 3 + 2, 16 + 3 * 4 + 0] == expected


def test_restricted_softmax_equals_full_softmax_over_the_candidates() -> None:
    model = BEiT3Pretrainer(backbone=BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32))
    states, targets = torch.randn(7, 32), torch.tensor([5, 9, 5, 100, 9, 7, 100])
    candidates = torch.tensor([100, 5, 7, 9, 3])
    model.restrict_output(candidates)
    logits, classes = model._mlm_logits(states, targets)
    full = model.mlm_head(states)[:, model.output_ids]
    assert torch.allclose(logits, full)
    assert torch.equal(model.output_ids[classes], targets)
    assert torch.allclose(F.cross_entropy(logits, classes), F.cross_entropy(full, classes))
    with pytest.raises(ValueError, match="outside the restricted"):
        model._mlm_logits(states, torch.tensor([6]))


def test_image_text_contrastive_is_symmetric_cross_entropy_of_pooled_unimodal_states() -> None:
    torch.manual_seed(0)
    beit3 = BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32, vocab_size=50).eval()
    images = torch.randn(3, 3, 32, 32)
    ids = torch.tensor(
        [[BOS_ID, 7, 8, EOS_ID, PAD_ID], [BOS_ID, 9, EOS_ID, PAD_ID, PAD_ID], [BOS_ID, 4, 5, 6, EOS_ID]]
    )
    padding = ids == PAD_ID
    loss = image_text_contrastive(beit3, images, ids, padding, temperature=0.5)
    # By hand: each image's patches and each caption's words (no <s>, </s>, padding) averaged separately.
    image = torch.stack([beit3(image=images[i : i + 1])[0, 1:].mean(0) for i in range(3)])
    # Each caption alone, unpadded, with its <s> and </s>; its n words averaged.
    words = zip(ids, (2, 1, 3), strict=True)
    text = torch.stack([beit3(text_ids=row[None, : n + 2])[0, 1 : n + 1].mean(0) for row, n in words])
    sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / 0.5
    expected = (F.cross_entropy(sim, torch.arange(3)) + F.cross_entropy(sim.T, torch.arange(3))) / 2
    assert torch.allclose(loss, expected, atol=1e-5)
    with pytest.raises(ValueError, match="itc_weight"):
        BEiT3PretrainModule(model=BEiT3Pretrainer(backbone=beit3), itc_weight=-1.0)


def test_hard_negatives_never_pick_the_positive_caption() -> None:
    ids = torch.tensor([[BOS_ID, 7, EOS_ID], [BOS_ID, 8, EOS_ID], [BOS_ID, 7, EOS_ID], [BOS_ID, 9, EOS_ID]])
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # rows 0 and 2 share a caption: neither is the other's negative
        text, image = hard_negatives(None, ids, g)
        for i, (t, m) in enumerate(zip(text.tolist(), image.tolist(), strict=True)):
            assert not torch.equal(ids[t], ids[i]) and not torch.equal(ids[m], ids[i])
    # The similarities choose: a pair far above the others is (almost) always the one drawn.
    sim = torch.zeros(4, 4)
    sim[0, 3] = sim[3, 1] = 50.0
    text, image = hard_negatives(sim, ids, g)
    assert text[0] == 3 and image[1] == 3  # caption 3 for image 0; image 3 for caption 1 (column 1)
    same = torch.tensor([[BOS_ID, 7, EOS_ID]] * 3)
    assert hard_negatives(None, same, g)[0].tolist() == [-1, -1, -1]  # nothing differs: no negative


def test_matching_negatives_are_hard_at_vlmo_temperature() -> None:
    """softmax(cosine / 0.07) draws the caption the contrast confuses with the positive; bare cosines
    (temperature 1) draw near-uniformly: the deviation the shipped trunk was first made with."""
    ids = torch.tensor([[BOS_ID, 7 + i, EOS_ID] for i in range(6)])
    cosine = torch.full((6, 6), 0.1)
    cosine.fill_diagonal_(0.9)
    cosine[0, 1] = 0.8  # caption 1 nearly describes image 0
    g = torch.Generator().manual_seed(0)
    def share(temperature: float) -> float:
        return sum(int(hard_negatives(cosine / temperature, ids, g)[0][0] == 1) for _ in range(400)) / 400
    assert share(0.07) > 0.9 and share(1.0) < 0.45
    beit3 = BEiT3(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, vocab_size=64)
    with pytest.raises(ValueError, match="itm_temperature"):
        BEiT3PretrainModule(model=BEiT3Pretrainer(backbone=beit3), itm_weight=1.0, itm_temperature=0.0)


def test_image_text_matching_reads_each_pair_one_way() -> None:
    torch.manual_seed(0)
    beit3 = BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32, vocab_size=50).eval()
    head = torch.nn.Linear(32, 2)
    images = torch.randn(3, 3, 32, 32)
    ids = torch.tensor(
        [[BOS_ID, 7, 8, EOS_ID, PAD_ID], [BOS_ID, 9, EOS_ID, PAD_ID, PAD_ID], [BOS_ID, 4, 5, 6, EOS_ID]]
    )
    lengths = (4, 3, 5)
    padding = ids == PAD_ID
    sim = torch.full((3, 3), -50.0)
    sim[0, 1] = sim[1, 2] = sim[2, 0] = 50.0  # image i's hard caption: i + 1; caption j's hard image: j - 1
    loss, correct, total = image_text_matching(beit3, head, images, ids, padding, sim)
    assert total == 9

    def verdict(i: int, j: int) -> torch.Tensor:  # image i with caption j alone, unpadded, by hand
        n, vision = lengths[j], 1 + 4
        allowed = torch.ones(1, vision + n, vision + n, dtype=torch.bool)
        allowed[:, :vision, vision:] = False  # the image does not read the caption
        states = beit3(image=images[i : i + 1], text_ids=ids[j : j + 1, :n], attn_mask=allowed)
        return head(states[0, vision + 1 : vision + n - 1].mean(0))

    pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0), (2, 0), (0, 1), (1, 2)]
    logits = torch.stack([verdict(i, j) for i, j in pairs])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-5)
    assert int(correct) == int((logits.argmax(-1) == labels).sum())
    with pytest.raises(ValueError, match="itm_weight"):
        BEiT3PretrainModule(model=BEiT3Pretrainer(backbone=beit3), itm_weight=-1.0)
    module = BEiT3PretrainModule(model=BEiT3Pretrainer(backbone=beit3), itm_weight=1.0)
    assert module.model.itm_head is not None  # made by the weight, exported beside the other heads
    assert "itm_head.weight" in module.model.heads_state_dict()
    assert "itm_head.weight" not in BEiT3Pretrainer(backbone=beit3).heads_state_dict()
    with pytest.raises(ValueError, match="enable_matching"):
        BEiT3Pretrainer(backbone=beit3)(
            images, ids, padding, padding.clone(), torch.zeros(3, 4, dtype=torch.bool), matching=True
        )


GROUPS = [["red", "orange", "blue"], ["ball", "cross"], ["sky", "brick wall"]]


def test_swap_words_names_only_what_the_image_does_not_show() -> None:
    caption = "a red ball on the sand under the sky."
    context = caption + "\nthe red ball is in the middle. there is grass above the sand."
    rng = random.Random(0)
    seen = {swap_words(caption, GROUPS, context, rng) for _ in range(200)}
    assert seen == {  # one phrase swapped for an absent one of its group, every option drawn
        "a orange ball on the sand under the sky.",
        "a blue ball on the sand under the sky.",
        "a red cross on the sand under the sky.",
        "a red ball on the sand under the brick wall.",
    }
    # Whole words only ("redwood" is no "red"), phrases of two words, and nothing left to swap -> None.
    assert swap_words("a redwood by a brick wall.", GROUPS, "a redwood by a brick wall.", rng) == (
        "a redwood by a sky."
    )
    full = "a red ball, an orange cross and a blue ball under the sky in front of a brick wall."
    assert swap_words(full, GROUPS, full, rng) is None
    assert swap_words("a view.", GROUPS, "a view.", rng) is None
    draws = [swap_words(caption, GROUPS, context, random.Random(3)) for _ in range(3)]
    assert len(set(draws)) == 1  # deterministic given the generator
    with pytest.raises(ValueError, match="swap_groups"):
        BEiT3PretrainModule(
            model=BEiT3Pretrainer(backbone=BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32)),
            itc_weight=1.0,
            swap_groups=[["red"]],
        )
    with pytest.raises(ValueError, match="itc_weight or itm_weight"):
        BEiT3PretrainModule(
            model=BEiT3Pretrainer(backbone=BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32)),
            swap_groups=GROUPS,
        )


def test_swapped_captions_are_extra_negatives_of_their_image() -> None:
    torch.manual_seed(0)
    image, text, extra = (F.normalize(torch.randn(n, 8), dim=-1) for n in (4, 4, 2))
    logits = image @ text.T / 0.07
    target = torch.arange(4)
    expected = (
        F.cross_entropy(torch.cat([logits, image @ extra.T / 0.07], 1), target)
        + F.cross_entropy(logits.T, target)
    ) / 2
    assert torch.allclose(contrastive_loss(image, text, negatives=extra), expected)
    assert contrastive_loss(image, text, negatives=extra) > contrastive_loss(image, text)
    beit3 = BEiT3(embed_dim=32, depth=1, num_heads=2, img_size=32, vocab_size=50).eval()
    head = torch.nn.Linear(32, 2)
    images = torch.randn(3, 3, 32, 32)
    ids = torch.tensor([[BOS_ID, 7, 8, EOS_ID], [BOS_ID, 9, EOS_ID, PAD_ID], [BOS_ID, 4, 5, EOS_ID]])
    swap = torch.tensor([[BOS_ID, 7, 9, 9, 9, EOS_ID], [BOS_ID, 6, EOS_ID, PAD_ID, PAD_ID, PAD_ID]] * 2)[:3]
    valid = torch.tensor([True, False, True])
    sim = torch.zeros(3, 3)
    padding = ids == PAD_ID
    plain = image_text_matching(beit3, head, images, ids, padding, sim, torch.Generator().manual_seed(0))
    loss, _, total = image_text_matching(
        beit3, head, images, ids, padding, sim,
        torch.Generator().manual_seed(0), (swap, swap == PAD_ID, valid)
    )
    assert (plain[2], total) == (9, 11)  # two more negatives: image 0 and image 2 with their swaps
    # The same negatives as the plain call (same generator), plus each swap read with its image, by hand.
    extra = _mismatch_nll(beit3, head, images[0], swap[0]) + _mismatch_nll(beit3, head, images[2], swap[2])
    assert torch.isclose(loss * 11, plain[0] * 9 + extra, atol=1e-4)


def _mismatch_nll(
    beit3: BEiT3, head: torch.nn.Module, image: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """The matching loss of one (image, caption) pair labelled "no", unpadded, the image not reading it."""
    ids = ids[ids != PAD_ID]
    vision = 1 + 4
    allowed = torch.ones(1, vision + len(ids), vision + len(ids), dtype=torch.bool)
    allowed[:, :vision, vision:] = False
    states = beit3(image=image[None], text_ids=ids[None], attn_mask=allowed)
    logit = head(states[0, vision + 1 : vision + len(ids) - 1].mean(0))
    return F.cross_entropy(logit[None], torch.tensor([0]))


def test_official_state_dict_loads_into_torchscale_and_back() -> None:
    cfg = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, vocab_size=120)
    ours = randomize_(BEiT3(**cfg)).eval()
    state = official_state_dict(ours, heads={"mlm_head.weight": torch.zeros(120, 32)})
    ref = torchscale_beit3(**cfg).eval()
    beit3 = {k[len("beit3.") :]: v for k, v in state["model"].items() if k.startswith("beit3.")}
    assert set(beit3) == set(ref.state_dict())  # exactly the official key set
    ref.load_state_dict(beit3, strict=True)
    image, text = torch.randn(2, 3, 32, 32), torch.randint(3, 120, (2, 5))
    expected = ref(textual_tokens=text, visual_tokens=image)["encoder_out"]
    assert torch.allclose(ours(image=image, text_ids=text), expected, atol=1e-5)
    back = BEiT3(**cfg)
    load_beit3_checkpoint(back, state)  # the heads are dropped as the release files' are
    for (k, v), w in zip(ours.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_short_pretraining_learns(tmp_path: Path) -> None:
    L.seed_everything(0)
    data = CaptionCorpusDataModule(
        root=str(tmp_path), world=WorldCorpus(num_images=400), val_images=40, batch_size=32
    )
    steps = 120
    module = BEiT3PretrainModule(
        model=BEiT3Pretrainer(backbone=BEiT3(embed_dim=64, depth=2, num_heads=4, img_size=64)),
        optimizer=partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.01),
        scheduler=partial(WarmupDecayLR, max_steps=steps, warmup_steps=10),
        itc_weight=1.0,
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
    )
    data.prepare_data()
    module.restrict_output_to(data.train_captions())  # as fit does, so both losses are over the same ids
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.callback_metrics
    assert float(after["val/mlm_loss"]) < 0.7 * before["val/mlm_loss"]
    assert float(after["val/mim_loss"]) < before["val/mim_loss"]
    assert float(after["val/itc_loss"]) < before["val/itc_loss"] - 0.4  # 3.56 -> 2.88 measured
    # The contrastive loss has learned pairs, not a prior: held-out images with their captions rolled by two
    # (each image has two consecutive captions, so every pair is then wrong) score worse than with their own.
    batch = next(iter(data.val_dataloader()))
    images = (batch.images.float() - PIXEL_MEAN) / PIXEL_STD
    ids, padding = module.tokenize(batch.captions)
    with torch.no_grad():
        own = image_text_contrastive(module.model.beit3, images, ids, padding)
        rolled = image_text_contrastive(module.model.beit3, images, ids.roll(2, 0), padding.roll(2, 0))
    assert float(own) < float(rolled) - 0.3
    # Held-out masked tokens: better than always answering the most frequent training token.
    assert float(after["val/mlm_acc"]) > float(after["val/unigram_acc"]) + 0.05
    path = module.export(tmp_path / "pretrained.pth")
    fresh = BEiT3(embed_dim=64, depth=2, num_heads=4, img_size=64)
    load_beit3_checkpoint(fresh, path)
    assert torch.equal(fresh.text_embed.weight, module.model.beit3.text_embed.weight)
    # --half: the encoder alone in float16 (the file the repository ships), loaded back into float32.
    half = module.export(tmp_path / "half.pth", half=True)
    stored = torch.load(half, weights_only=True)["model"]
    assert all(k.startswith("beit3.") for k in stored)  # no pre-training heads
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.3 * path.stat().st_size
    from_half = BEiT3(embed_dim=64, depth=2, num_heads=4, img_size=64)
    load_beit3_checkpoint(from_half, half)
    assert from_half.text_embed.weight.dtype == torch.float32
    assert torch.equal(from_half.text_embed.weight, module.model.beit3.text_embed.weight.half().float())

