"""Captioning on a frozen tiny segmenter: Lightning fit, captions for results, box and point prompts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import caption_prompt, caption_results, match_queries, segmenter_pass
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.data.coco_panoptic import CocoPanopticDataset
from omtseg.data.regions import PanopticRegionCaptions, collate_regions
from omtseg.data.synthetic import make_synthetic_panoptic, synthetic_vocabulary
from omtseg.lit_captioner import CaptionerModule
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo

VOCAB = synthetic_vocabulary()


def tiny_segmenter() -> OMTSeg:
    torch.manual_seed(0)
    return OMTSeg(
        backbone="tiny",
        img_size=64,
        adapter_channels=32,
        conv_dim=32,
        mask_dim=16,
        num_pixel_decoder_layers=1,
        hidden_dim=32,
        num_queries=6,
        num_decoder_layers=2,
        num_heads=4,
        decoder_feedforward=48,
        pixel_decoder_feedforward=48,
        object_threshold=0.0,  # an untrained segmenter: keep its segments so there is something to caption
        overlap_threshold=0.0,
    )


def tiny_captioner(lm_dir: Path, **kw: Any) -> SegmentCaptioner:
    torch.manual_seed(0)
    args: dict[str, Any] = dict(
        language_model=lm_dir, feature_dim=32, query_dim=32, width=32, num_layers=3, num_heads=2, ffn_dim=64
    )
    return SegmentCaptioner(**{**args, **kw})


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_level_lm(tmp_path_factory.mktemp("lm"), synthetic_caption_words(VOCAB), width=32)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> PanopticRegionCaptions:
    split = make_synthetic_panoptic(tmp_path_factory.mktemp("syn"), num_images=2, image_size=64, seed=5)
    base = CocoPanopticDataset(**asdict(split))
    return PanopticRegionCaptions(dataset=base, vocabulary=base.vocabulary, captions="synthetic")


def _batch(images: torch.Tensor, size: tuple[int, int]) -> Batch:
    b = images.shape[0]
    infos = [ImageInfo(image_id=i, file_name=f"{i}.png", orig_size=size, resized_size=size) for i in range(b)]
    return Batch(
        images=images,
        padding_mask=torch.zeros(b, *images.shape[-2:], dtype=torch.bool),
        targets=None,
        infos=infos,
        vocabulary=VOCAB,
    )


def test_segmenter_pass_keeps_features_and_queries() -> None:
    seg = tiny_segmenter().eval()
    tap = segmenter_pass(seg, torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8), VOCAB)
    assert [tuple(f.shape) for f in tap.multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert tap.queries.shape == (2, 6, 32) and tap.mask_logits.shape == (2, 6, 16, 24)
    assert tap.results is None
    # hooks are gone afterwards
    assert not seg.pixel_decoder._forward_hooks and not seg.decoder.decoder_norm._forward_hooks


def test_match_queries_picks_the_best_overlap() -> None:
    logits = -torch.ones(2, 3, 8, 8)
    logits[1, 2, :4, :4] = 1  # image 1, query 2: the top-left quarter
    logits[1, 0, 4:, :] = 1  # image 1, query 0: the bottom half
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, 20:, :] = True
    masks[2, 30, 30] = True  # smaller than a cell: keeps the cell it touches (bottom half)
    assert match_queries(logits, masks, torch.tensor([1, 1, 1])).tolist() == [2, 0, 0]
    assert match_queries(logits, masks[:0], torch.zeros(0, dtype=torch.long)).shape == (0,)


@pytest.mark.slow
def test_lightning_trains_the_captioner_and_keeps_the_segmenter_frozen(
    lm_dir: Path, regions: PanopticRegionCaptions, tmp_path: Path
) -> None:
    seg = tiny_segmenter()
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    module = CaptionerModule(
        segmenter=seg,
        captioner=tiny_captioner(lm_dir, freeze_language_model=False),  # a random tiny LM must learn too
        class_names=list(VOCAB.names),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
        max_new_tokens=12,
    )
    loader = DataLoader(regions, batch_size=2, collate_fn=collate_regions)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, *args: Any) -> None:
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        callbacks=[Record()],
        max_steps=15,
        limit_val_batches=1,
        check_val_every_n_epoch=15,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader, loader)
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in before.items())
    assert not seg.training
    assert "val/cider_d" in trainer.callback_metrics and "val/bleu_4" in trainer.callback_metrics
    assert trainer.callback_metrics["val/cider_d"] > 1.0  # region captions learnt from 2 images: mostly right


def test_caption_results_fill_every_segment(lm_dir: Path) -> None:
    seg, cap = tiny_segmenter().eval(), tiny_captioner(lm_dir).eval()
    batch = _batch(torch.randint(0, 256, (2, 3, 48, 40), dtype=torch.uint8), (48, 40))
    results = caption_results(seg, cap, batch, max_new_tokens=4, chunk_size=3)
    segments = [s for r in results for s in r.panoptic.segments]
    assert segments and all(isinstance(s.caption, str) for s in segments)


def test_prompted_captions(lm_dir: Path) -> None:
    seg, cap = tiny_segmenter().eval(), tiny_captioner(lm_dir).eval()
    batch = _batch(torch.randint(0, 256, (1, 3, 48, 40), dtype=torch.uint8), (48, 40))
    panoptic = seg.predict(batch, tasks=("panoptic",))[0].panoptic
    ys, xs = torch.nonzero(panoptic.id_map > 0, as_tuple=True)
    text, chosen = caption_prompt(seg, cap, batch, point=(int(xs[0]), int(ys[0])), max_new_tokens=4)
    assert chosen == int(panoptic.id_map[ys[0], xs[0]]) and isinstance(text, str)
    # a box around exactly one segment selects it; caption_box=True captions the box itself
    target = panoptic.segments[0]
    sy, sx = torch.nonzero(panoptic.id_map == target.id, as_tuple=True)
    box = (int(sx.min()), int(sy.min()), int(sx.max()) + 1, int(sy.max()) + 1)
    _, chosen_box = caption_prompt(seg, cap, batch, box=box, min_iou=0.0, max_new_tokens=4)
    assert chosen_box is not None
    _, none = caption_prompt(seg, cap, batch, box=box, caption_box=True, max_new_tokens=4)
    assert none is None
    with pytest.raises(ValueError, match="exactly one"):
        caption_prompt(seg, cap, batch, max_new_tokens=4)
    with pytest.raises(ValueError, match="outside"):
        caption_prompt(seg, cap, batch, point=(400, 3))
