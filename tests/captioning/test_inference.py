"""Captioning on a segmenter's pass: the tap, query matching, captions for results (prompts: test_prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny import VOCAB, image_batch, tiny_captioner, tiny_segmenter

from omtseg.captioning.inference import (
    SegmenterTap,
    caption_results,
    match_queries,
    segmenter_pass,
)
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.data.caption_text import synthetic_caption_words


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_level_lm(tmp_path_factory.mktemp("lm"), synthetic_caption_words(VOCAB), width=32)


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


def test_the_tap_keeps_a_pass_it_did_not_run() -> None:
    seg = tiny_segmenter().eval()
    batch = image_batch(torch.randint(0, 256, (1, 3, 48, 40), dtype=torch.uint8), (48, 40))
    tap = SegmenterTap(seg)
    with pytest.raises(RuntimeError, match="has not run"):
        tap.captured()
    with torch.no_grad():
        results = seg.predict(batch, tasks=("panoptic",))  # e.g. a LightningModule's predict_step
    captured = tap.captured(results)
    tap.remove()
    assert captured.results is results and captured.queries.shape == (1, 6, 32)
    assert not seg.pixel_decoder._forward_hooks and not seg.decoder._forward_hooks


def test_caption_results_fill_every_segment(lm_dir: Path) -> None:
    seg, cap = tiny_segmenter().eval(), tiny_captioner(lm_dir).eval()
    batch = image_batch(torch.randint(0, 256, (2, 3, 48, 40), dtype=torch.uint8), (48, 40))
    results = caption_results(seg, cap, batch, max_new_tokens=4, chunk_size=3)
    segments = [s for r in results for s in r.panoptic.segments]
    assert segments and all(isinstance(s.caption, str) for s in segments)
