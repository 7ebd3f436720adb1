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
from omtseg.data.regions import PanopticRegionCaptions, RegionBatch, collate_regions
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


def test_sca_recipe_switches_groups_schedule_and_regions(
    lm_dir: Path, regions: PanopticRegionCaptions, tmp_path: Path
) -> None:
    module = CaptionerModule(
        segmenter=tiny_segmenter(),
        captioner=tiny_captioner(lm_dir, freeze_language_model=False),
        class_names=list(VOCAB.names),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        language_model_lr=1e-5,
        label_smoothing=0.1,
        warmup_steps=2,
        lr_decay="cosine",
        regions_per_image=1,
    )
    # Mixer and LM in separate groups, each trainable parameter in exactly one.
    mixer, lm = module.param_groups()
    lm_ids = {id(p) for p in module.captioner.lm.parameters()}
    assert lm["lr"] == 1e-5 and all(id(p) in lm_ids for p in lm["params"]) and "lr" not in mixer
    assert not any(id(p) in lm_ids for p in mixer["params"])
    trainable = [p for p in module.captioner.parameters() if p.requires_grad]
    assert len(mixer["params"]) + len(lm["params"]) == len(trainable)
    rates: list[list[float]] = []
    sizes: list[int] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *args: Any) -> None:
            rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])
            sizes.append(len(batch.region_ids))

    trainer = L.Trainer(
        callbacks=[Record()], max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trained: list[int] = []
    forward = module.captioner.forward

    def counting_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        trained.append(kwargs["masks"].shape[0])
        return forward(*args, **kwargs)

    module.captioner.forward = counting_forward  # type: ignore[method-assign]
    trainer.fit(module, DataLoader(regions, batch_size=2, collate_fn=collate_regions))
    # Linear warm-up from 0 over 2 steps, then cosine to 0 at step 4, both groups alike.
    factors = [0.0, 0.5, 1.0, 0.5]
    expected = [rate * f for f in factors for rate in (1e-3, 1e-5)]
    assert [r for step in rates for r in step] == pytest.approx(expected)
    # Each step trains on one random region per image, of the more each batch holds.
    assert trained == [2] * 4 and all(n > 2 for n in sizes)


def test_region_sampling_keeps_at_most_k_per_image_at_random() -> None:
    masks = torch.zeros(6, 8, 8, dtype=torch.bool)
    batch = RegionBatch(
        images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8), masks=masks,
        segment_batch_index=torch.tensor([0, 0, 0, 0, 1, 1]), captions=[[str(i)] for i in range(6)],
        region_ids=[f"r{i}" for i in range(6)], infos=[],
    )  # fmt: skip
    seen = set()
    for seed in range(20):
        picked = batch.sample_regions(2, torch.Generator().manual_seed(seed))
        assert picked.segment_batch_index.tolist() == [0, 0, 1, 1]
        assert picked.region_ids[2:] == ["r4", "r5"] and picked.captions[0] == [picked.region_ids[0][1:]]
        assert picked.region_ids[:2] == sorted(picked.region_ids[:2])  # kept in their order
        seen.update(picked.region_ids[:2])
    assert seen == {"r0", "r1", "r2", "r3"}  # over steps, every region of the first image is trained on
    with pytest.raises(ValueError, match="at least one"):
        batch.sample_regions(0)
