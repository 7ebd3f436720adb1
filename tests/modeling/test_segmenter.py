"""OMTSeg end to end (tiny): shapes at odd sizes, where gradients flow, ablations, prediction, caching."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from omtseg.modeling.backbone.beit3 import BEiT3
from omtseg.modeling.segmenter import OMTSeg, reduce_synonyms
from omtseg.types import Batch, ImageInfo, Predictions, Vocabulary

VOCAB = Vocabulary.from_names(["cat", "tv, monitor", "sky"], is_thing=[True, True, False])


def tiny(**kw: Any) -> OMTSeg:
    args: dict[str, Any] = dict(
        backbone="tiny",
        img_size=64,
        adapter_channels=32,
        conv_dim=32,
        mask_dim=16,
        num_pixel_decoder_layers=1,
        hidden_dim=32,
        num_queries=5,
        num_decoder_layers=2,
        num_heads=4,
        decoder_feedforward=48,
        pixel_decoder_feedforward=48,
    )
    args.update(kw)
    torch.manual_seed(0)
    return OMTSeg(**args)



@pytest.fixture(scope="module")
def model(one_thread: None) -> OMTSeg:
    return tiny()


def test_forward_shapes_at_odd_sizes_with_synonyms_reduced(model: OMTSeg) -> None:
    pred = model(torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8), VOCAB)
    assert pred.class_logits.shape == (2, 5, 3)  # 4 prompt entries (tv and monitor) -> 3 classes
    assert pred.objectness_logits.shape == (2, 5)
    assert pred.mask_logits.shape == (2, 5, 16, 24)  # 50x70 padded to 64x96, stride 4
    assert len(pred.aux) == 2 and all(a.class_logits.shape == (2, 5, 3) for a in pred.aux)
    assert torch.isfinite(pred.class_logits).all() and torch.isfinite(pred.mask_logits).all()
    float_pred = model(torch.rand(1, 3, 33, 47) * 255, VOCAB)
    assert float_pred.mask_logits.shape == (1, 5, 16, 16)


def test_gradients_reach_the_trainable_parts_only(model: OMTSeg) -> None:
    model.zero_grad(set_to_none=True)
    pred = model(torch.randint(0, 256, (1, 3, 64, 40), dtype=torch.uint8), VOCAB)
    loss = sum(
        p.class_logits.sum() + p.objectness_logits.sum() + p.mask_logits.sum() for p in [pred, *pred.aux]
    )
    loss.backward()
    trunk = dict(model.backbone.named_parameters())
    frozen = {n for n, p in trunk.items() if not p.requires_grad}
    assert {n for n in trunk if n not in frozen} == {"embed_positions.A.weight", "embed_positions.B.weight"}
    assert all(trunk[n].grad is None for n in frozen)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    for name in (
        "prompts.wls",
        "adapter.backbone.embed_positions.A.weight",
        "adapter.backbone.embed_positions.B.weight",
        "adapter.spm.stem.0.weight",
        "pixel_decoder.mask_proj.weight",
        "decoder.text_proj.weight",
        "decoder.logit_scale",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_trainable_parameters_partition_by_prefix(model: OMTSeg) -> None:
    groups = model.trainable_parameters()
    flat = [id(p) for ps in groups.values() for p in ps]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(flat) == sorted(trainable) and len(set(flat)) == len(flat)
    assert len(groups["adapter.backbone"]) == 2 and len(groups["prompts"]) == 1
    assert all(len(groups[k]) > 0 for k in ("adapter", "pixel_decoder", "decoder"))


def test_predict_maps_back_to_original_sizes(model: OMTSeg) -> None:
    torch.manual_seed(1)
    model.eval()
    infos = [
        ImageInfo(image_id=1, file_name="a.jpg", orig_size=(100, 140), resized_size=(50, 70), flipped=True),
        ImageInfo(image_id=2, file_name="b.jpg", orig_size=(21, 30), resized_size=(40, 57)),
    ]
    batch = Batch(
        images=torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8),
        padding_mask=torch.zeros(2, 50, 70, dtype=torch.bool),
        targets=None,
        infos=infos,
        vocabulary=VOCAB,
    )
    results = model.predict(batch, object_threshold=0.0, overlap_threshold=0.0)
    model.train()
    for r, info in zip(results, infos, strict=True):
        assert r.info is info
        assert tuple(r.panoptic.id_map.shape) == info.orig_size
        assert tuple(r.semantic.labels.shape) == info.orig_size
        assert int(r.semantic.labels.min()) >= 0 and int(r.semantic.labels.max()) < 3
        assert r.instances.masks.shape[1:] == info.orig_size
        assert all(0 <= s.label < 3 for s in r.panoptic.segments)
    assert any(r.panoptic.segments for r in results)  # thresholds 0 keep queries


def test_reduce_synonyms_takes_the_max_per_class() -> None:
    logits = torch.tensor([[[1.0, 5.0, 2.0, -1.0], [0.0, -3.0, 4.0, 7.0]]])  # (1, 2, 4)
    aux = Predictions(
        class_logits=logits - 1, objectness_logits=torch.zeros(1, 2), mask_logits=torch.zeros(1, 2, 1, 1)
    )
    pred = Predictions(
        class_logits=logits,
        objectness_logits=torch.zeros(1, 2),
        mask_logits=torch.zeros(1, 2, 1, 1),
        aux=[aux],
    )
    out = reduce_synonyms(pred, torch.tensor([0, 1, 1, 2]), 3)
    assert out.class_logits.tolist() == [[[1.0, 5.0, -1.0], [0.0, 4.0, 7.0]]]
    assert out.aux[0].class_logits.tolist() == [[[0.0, 4.0, -2.0], [-1.0, 3.0, 6.0]]]


def test_long_vocabulary_runs_in_several_chunks() -> None:
    model = tiny(max_text_tokens=16)
    vocab = Vocabulary.from_names([f"class number {i}" for i in range(7)])
    assert len(model.prompts.tokenize(vocab)) > 1
    pred = model(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), vocab)
    assert pred.class_logits.shape == (1, 5, 7) and torch.isfinite(pred.class_logits).all()


def test_ablation_no_cross_modal_caches_text_while_weights_are_unchanged() -> None:
    model = tiny(cross_modal=False).eval()
    images = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    with torch.no_grad():
        chunks = model._chunks(VOCAB, images.device)
        first = model._text_features(VOCAB, chunks)
        assert model._text_features(VOCAB, chunks) is first
        pred = model(images, VOCAB)
        model.prompts.wls.add_(1.0)  # an in-place update, like an optimizer step
        assert not torch.equal(model._text_features(VOCAB, chunks), first)
    assert pred.class_logits.shape == (2, 5, 3)
    model.train()  # training never reads the cache, and <WLS> still learns through the text-only pass
    loss = model(images, VOCAB).class_logits.sum()
    loss.backward()
    assert model.prompts.wls.grad.abs().sum() > 0


def test_ablation_simple_pyramid_and_frozen_prompts() -> None:
    model = tiny(visual_adapter=False, prompt_tuning=False)
    assert not model.prompts.wls.requires_grad and model.trainable_parameters()["prompts"] == []
    assert not any(n.startswith("adapter.injectors") for n, _ in model.named_parameters())
    pred = model(torch.randint(0, 256, (1, 3, 48, 40), dtype=torch.uint8), VOCAB)
    pred.mask_logits.sum().backward()
    assert pred.class_logits.shape == (1, 5, 3) and model.prompts.wls.grad is None


def test_patch_size_reaches_the_trunk_and_weights_of_another_patch_size_are_refused() -> None:
    model = tiny(patch_size=8)
    assert model.backbone.patch_size == 8 and model.backbone.grid == (8, 8)
    pred = model(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8), VOCAB)
    assert pred.class_logits.shape == (2, 5, 3) and pred.mask_logits.shape[-2:] == (16, 24)
    with pytest.raises(ValueError, match="vision_embed.proj.weight"):  # a 16-pixel checkpoint does not fit
        model.load_backbone_weights(BEiT3(embed_dim=64, depth=4, num_heads=4, img_size=64).state_dict())


def test_backbone_weights_restart_the_prompt_vector(model: OMTSeg) -> None:
    other = BEiT3(embed_dim=64, depth=4, num_heads=4, img_size=64)
    model.load_backbone_weights(other.state_dict())
    torch.testing.assert_close(model.prompts.wls.detach(), other.text_embed.weight[0])
    torch.testing.assert_close(model.backbone.blocks[0].state_dict(), other.blocks[0].state_dict())


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="backbone"):
        OMTSeg(backbone="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RGB"):
        tiny().preprocess(torch.zeros(1, 1, 32, 32))
