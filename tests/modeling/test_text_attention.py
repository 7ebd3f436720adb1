"""Per-name text attention: masks, layout, class features independent of other names and their order."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_segmenter import tiny as tiny_segmenter  # noqa: E402  (tests/modeling is on the test path)

from omtseg.modeling.backbone.beit3 import BEiT3
from omtseg.modeling.prompts import PromptEncoder, prompt_attention_mask
from omtseg.modeling.segmenter import OMTSeg
from omtseg.modeling.tokenizer import WLS_ID
from omtseg.types import Vocabulary

NAMES = ["red ball", "tv, monitor", "blue star", "stuff: sky", "brick wall"]


def vocab(names: list[str]) -> Vocabulary:
    return Vocabulary.from_names(
        [n.removeprefix("stuff: ") for n in names], is_thing=[not n.startswith("stuff:") for n in names]
    )



def tiny(**kw: Any) -> OMTSeg:
    return tiny_segmenter(**kw).eval()  # the tiny test segmenter, in eval mode


def test_per_name_layout() -> None:
    prompts = PromptEncoder(embed_dim=16)
    (chunk,) = prompts.tokenize(vocab(NAMES), per_name=True)
    assert chunk.prompt_class.tolist() == [0, 1, 1, 2, 3, 4]  # "tv, monitor" is two entries of class 1
    assert (chunk.text_ids[chunk.wls_index] == WLS_ID).all()
    assert (chunk.text_positions[chunk.wls_index] == 0).all()  # every name starts at position 0
    for e in range(6):
        positions = chunk.text_positions[chunk.entry == e]
        assert positions.tolist() == list(range(len(positions)))
    sequential = prompts.tokenize(vocab(NAMES))[0]
    assert sequential.entry[0] == -1 and sequential.entry[-1] == -1
    assert sequential.entry[sequential.wls_index].tolist() == list(range(6))


def test_prompt_attention_mask() -> None:
    entry = torch.tensor([0, 0, 1, 1, 1])
    m = prompt_attention_mask(3, entry, image_attends_text=True)[0]
    assert m.shape == (8, 8) and m[:3].all() and m[3:, :3].all()
    assert m[3, 4] and not m[3, 5] and m[5, 7] and not m[7, 3]
    one_way = prompt_attention_mask(3, entry, image_attends_text=False)[0]
    assert not one_way[:3, 3:].any() and torch.equal(one_way[3:], m[3:])


def test_backbone_mask_equals_separate_passes() -> None:
    torch.manual_seed(0)
    model = BEiT3(embed_dim=32, depth=2, num_heads=2, img_size=32, vocab_size=100).eval()
    image, a, b = torch.randn(1, 3, 32, 32), torch.randint(3, 100, (1, 3)), torch.randint(3, 100, (1, 4))
    positions = torch.tensor([0, 1, 2, 0, 1, 2, 3])
    one_way = prompt_attention_mask(5, torch.tensor([0, 0, 0, 1, 1, 1, 1]), image_attends_text=False)
    joint = model(image=image, text_ids=torch.cat([a, b], 1), text_positions=positions, attn_mask=one_way)
    alone_a = model(
        image=image, text_ids=a, attn_mask=prompt_attention_mask(5, torch.zeros(3), image_attends_text=False)
    )
    alone_b = model(
        image=image, text_ids=b, attn_mask=prompt_attention_mask(5, torch.zeros(4), image_attends_text=False)
    )
    assert torch.allclose(joint[:, :5], model(image=image), atol=1e-5)  # the image ignores the text
    assert torch.allclose(joint[:, 5:8], alone_a[:, 5:], atol=1e-5)  # each name reads itself and the image
    assert torch.allclose(joint[:, 8:], alone_b[:, 5:], atol=1e-5)
    text = torch.cat([a, b], 1)
    full = torch.ones(1, 12, 12, dtype=torch.bool)
    assert torch.allclose(
        model(image=image, text_ids=text, attn_mask=full), model(image=image, text_ids=text)
    )


@pytest.mark.parametrize("mode", ["per_name", "one_way"])
def test_shuffled_vocabulary_gives_the_same_logits(mode: str) -> None:
    model = tiny(text_attention=mode)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        base = model(images, vocab(NAMES))
        order = [3, 0, 4, 1, 2]
        shuffled = model(images, vocab([NAMES[i] for i in order]))
    assert torch.allclose(shuffled.class_logits, base.class_logits[..., order], atol=1e-4)
    assert torch.allclose(shuffled.mask_logits, base.mask_logits, atol=1e-4)


def test_one_way_features_ignore_distractor_names_and_sequential_ones_do_not() -> None:
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    more = [*NAMES, "orange cross", "stuff: snow"]

    def features(model: OMTSeg, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        x = model.preprocess(images)
        image, wls = model._joint_passes(x, model._chunks(vocab(names), x.device))
        return image["f1"], wls[:, :6]  # the 6 entries of NAMES come first

    with torch.no_grad():
        one_way = tiny(text_attention="one_way")
        (fa, wa), (fb, wb) = features(one_way, NAMES), features(one_way, more)
        assert torch.allclose(fa, fb, atol=1e-5) and torch.allclose(wa, wb, atol=1e-5)
        per_name = tiny(text_attention="per_name")  # the image reads the names: features follow the set
        (fa, wa), (fb, wb) = features(per_name, NAMES), features(per_name, more)
        assert not torch.allclose(fa, fb, atol=1e-5)
        sequential = tiny()
        (fa, wa), (fb, wb) = features(sequential, NAMES), features(sequential, more)
        assert not torch.allclose(wa, wb, atol=1e-4)


def test_per_name_without_cross_modal_reads_each_name_alone() -> None:
    model = tiny(text_attention="per_name", cross_modal=False)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        both = model._text_features(vocab(NAMES[:3]), model._chunks(vocab(NAMES[:3]), images.device))
        first = model._text_features(vocab(NAMES[:1]), model._chunks(vocab(NAMES[:1]), images.device))
    assert torch.allclose(both[:, :1], first, atol=1e-5)
