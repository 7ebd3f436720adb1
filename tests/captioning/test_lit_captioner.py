"""The captioner's LightningModule: trains the captioner on region captions, the segmenter frozen."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from _tiny import VOCAB, tiny_captioner, tiny_segmenter
from torch.utils.data import DataLoader

from omtseg.captioning.language_model import make_word_level_lm
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.data.coco_panoptic import CocoPanopticDataset
from omtseg.data.regions import PanopticRegionCaptions, collate_regions
from omtseg.data.synthetic import make_synthetic_panoptic
from omtseg.lit_captioner import CaptionerModule


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_word_level_lm(tmp_path_factory.mktemp("lm"), synthetic_caption_words(VOCAB), width=32)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> PanopticRegionCaptions:
    split = make_synthetic_panoptic(tmp_path_factory.mktemp("syn"), num_images=2, image_size=64, seed=5)
    base = CocoPanopticDataset(**asdict(split))
    return PanopticRegionCaptions(dataset=base, vocabulary=base.vocabulary, captions="synthetic")


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
