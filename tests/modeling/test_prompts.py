"""Class prompts: chunking, the learnable <WLS> embedding, vocabulary sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from omtseg.modeling.backbone.beit3 import beit3_tiny
from omtseg.modeling.prompts import PromptEncoder, sample_vocabulary
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, WLS_ID, Beit3Tokenizer
from omtseg.types import Vocabulary

NAMES = ["person, people", "wall", "potted plant, houseplant", "tv, television, monitor", "sky", "floor"]


@pytest.fixture(scope="module")
def tokenizer() -> Beit3Tokenizer:
    return Beit3Tokenizer()


def _big_vocabulary(k: int) -> Vocabulary:
    words = ["red", "wooden", "old", "kitchen", "table", "chair", "street", "lamp", "tree", "glass"]
    names = [f"{words[i % 10]} {words[(i // 10) % 10]} {words[(i // 100) % 10]}, thing {i}" for i in range(k)]
    return Vocabulary.from_names(names)


def test_small_vocabulary_is_one_chunk(tokenizer: Beit3Tokenizer) -> None:
    vocab = Vocabulary.from_names(NAMES)
    (chunk,) = PromptEncoder(tokenizer=tokenizer, embed_dim=8).tokenize(vocab)
    ids = chunk.text_ids.tolist()
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert chunk.text_positions.tolist() == list(range(len(ids)))
    assert chunk.prompt_class.tolist() == [0, 0, 1, 2, 2, 3, 3, 3, 4, 5]
    assert (chunk.text_ids[chunk.wls_index] == WLS_ID).all()
    assert ids.count(WLS_ID) == 10
    # Each entry is <WLS> followed by "name;".
    expected = [BOS_ID]
    for synonyms in vocab.synonyms:
        for name in synonyms:
            expected += [WLS_ID, *tokenizer.encode(name + ";")]
    assert ids == expected + [EOS_ID]


@pytest.mark.parametrize("max_text_tokens", [16, 64, 256])
def test_chunks_are_bounded_and_cover_every_entry(tokenizer: Beit3Tokenizer, max_text_tokens: int) -> None:
    vocab = _big_vocabulary(150)
    chunks = PromptEncoder(tokenizer=tokenizer, embed_dim=8, max_text_tokens=max_text_tokens).tokenize(vocab)
    assert len(chunks) > 1
    counts: Counter[int] = Counter()
    for chunk in chunks:
        assert len(chunk.text_ids) <= max_text_tokens
        assert chunk.text_ids[0] == BOS_ID and chunk.text_ids[-1] == EOS_ID
        assert chunk.text_positions.tolist() == list(range(len(chunk.text_ids)))  # restart per chunk
        assert (chunk.text_ids[chunk.wls_index] == WLS_ID).all()
        assert int((chunk.text_ids == WLS_ID).sum()) == len(chunk.wls_index) == len(chunk.prompt_class)
        counts.update(chunk.prompt_class.tolist())
    assert counts == Counter({k: len(s) for k, s in enumerate(vocab.synonyms)})
    # Greedy packing: a chunk closes only when the next entry would not fit.
    budget = max_text_tokens - 2
    for chunk, nxt in zip(chunks, chunks[1:], strict=False):
        ends = [*nxt.wls_index.tolist(), len(nxt.text_ids) - 1]
        next_entry = ends[1] - ends[0]  # tokens of the next chunk's first entry
        assert len(chunk.text_ids) - 2 + next_entry > budget


def test_too_long_name_and_bad_budget(tokenizer: Beit3Tokenizer) -> None:
    vocab = Vocabulary.from_names(["a very long name made of many many words indeed"])
    with pytest.raises(ValueError, match="spells to"):
        PromptEncoder(tokenizer=tokenizer, embed_dim=8, max_text_tokens=8).tokenize(vocab)
    with pytest.raises(ValueError, match="max_text_tokens=2000"):
        PromptEncoder(tokenizer=tokenizer, embed_dim=8, max_text_tokens=2000)


def test_wls_embedding_is_substituted_and_learnable(tokenizer: Beit3Tokenizer) -> None:
    table = nn.Embedding(64010, 16).requires_grad_(False)
    prompts = PromptEncoder(tokenizer=tokenizer, embed_dim=16)
    prompts.init_from(table)
    torch.testing.assert_close(prompts.wls.detach(), table.weight[BOS_ID])
    (chunk,) = prompts.tokenize(Vocabulary.from_names(NAMES))
    embeds = prompts.embed_text(table, chunk.text_ids[None])  # (1, L, D)
    assert embeds.shape == (1, len(chunk.text_ids), 16)
    torch.testing.assert_close(embeds[0, chunk.wls_index], prompts.wls.detach().expand(10, -1))
    others = chunk.text_ids != WLS_ID
    torch.testing.assert_close(embeds[0, others], table.weight[chunk.text_ids[others]])
    # Row 64002 of the frozen table plays no part.
    table.weight[WLS_ID] += 100.0
    torch.testing.assert_close(prompts.embed_text(table, chunk.text_ids[None]), embeds)

    embeds.square().sum().backward()
    assert prompts.wls.grad is not None and prompts.wls.grad.abs().sum() > 0
    assert table.weight.grad is None


def test_wls_gets_gradient_through_beit3(tokenizer: Beit3Tokenizer) -> None:
    model = beit3_tiny(img_size=32, depth=2).requires_grad_(False)
    prompts = PromptEncoder(tokenizer=tokenizer, embed_dim=64)
    prompts.init_from(model.text_embed)
    (chunk,) = prompts.tokenize(Vocabulary.from_names(NAMES[:3]))
    text = prompts.embed_text(model.text_embed, chunk.text_ids[None])
    out = model(image=torch.randn(2, 3, 32, 32), text_embeds=text, text_positions=chunk.text_positions)
    vision_len = out.shape[1] - len(chunk.text_ids)
    out[:, vision_len + chunk.wls_index].sum().backward()
    assert prompts.wls.grad is not None and prompts.wls.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_frozen_prompts_for_the_ablation(tokenizer: Beit3Tokenizer) -> None:
    prompts = PromptEncoder(tokenizer=tokenizer, embed_dim=8, learnable=False)
    assert not prompts.wls.requires_grad
    assert "wls" in prompts.state_dict()
    with pytest.raises(ValueError, match="width 16"):
        prompts.init_from(nn.Embedding(10, 16))


def test_sample_vocabulary_keeps_present_and_shuffles() -> None:
    vocab = Vocabulary.from_names([f"class {i}" for i in range(20)])
    present = {3, 7, 11}
    gen = torch.Generator().manual_seed(0)
    orders = set()
    for _ in range(5):
        sub, index_map = sample_vocabulary(vocab, present, 8, gen)
        assert len(sub) == 8 and index_map.shape == (20,)
        kept = [k for k in range(20) if index_map[k] >= 0]
        assert len(kept) == 8 and present <= set(kept)
        for old in kept:
            assert sub.names[int(index_map[old])] == vocab.names[old]
        assert sorted(index_map[index_map >= 0].tolist()) == list(range(8))
        orders.add(tuple(sub.names))
    assert len(orders) > 1  # a different sample/order each call

    full, index_map = sample_vocabulary(vocab, present, None, gen)
    assert sorted(full.names) == sorted(vocab.names) and (index_map >= 0).all()
    assert list(full.names) != list(vocab.names)  # shuffled
    few, index_map = sample_vocabulary(vocab, present, 2, gen)
    assert set(few.names) == {"class 3", "class 7", "class 11"}
    labels = torch.tensor([7, 3, 11])
    assert [few.names[i] for i in index_map[labels].tolist()] == ["class 7", "class 3", "class 11"]


def test_sample_vocabulary_errors() -> None:
    vocab = Vocabulary.from_names(["a", "b"])
    with pytest.raises(ValueError, match="present classes"):
        sample_vocabulary(vocab, {5}, None)
    with pytest.raises(ValueError, match="num_classes=0"):
        sample_vocabulary(vocab, set(), 0)
