"""The LightningModule of BEiT-3-style pre-training (``omtseg pretrain``): steps, logging, export.

It tokenises the captions with the BEiT-3 tokenizer, draws the text and patch masks, and logs
``train/mlm_loss``, ``train/mim_loss``, ``train/mlm_acc`` and, on held-out pairs, ``val/mlm_acc`` beside
``val/unigram_acc``: the accuracy of always answering the training corpus's most frequent masked token, the
bar a model that does not read the image or the context cannot pass. Validation masks are drawn from a fixed
seed, so every validation scores the same positions. With ``itc_weight > 0`` it also logs
``train/itc_loss`` and ``val/itc_loss``, the image-text contrastive loss; with ``itm_weight > 0``
``train/itm_loss``, ``val/itm_loss`` and ``val/itm_acc``, image-text matching. :meth:`export` writes the
encoder in the official unilm format (:func:`~omtseg.modeling.backbone.beit3.official_state_dict`), the
file the segmentation configs load as ``backbone_weights``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from omtseg.data.corpus import CaptionBatch
from omtseg.io import atomic_path
from omtseg.modeling.backbone.beit3 import official_state_dict
from omtseg.modeling.pretraining import (
    BEiT3Pretrainer,
    PretrainLosses,
    corrupt_text,
    mask_patches,
    mask_text,
    swap_words,
)
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID, Beit3Tokenizer
from omtseg.optim import apply_lr_scale, param_groups

PIXEL_MEAN = PIXEL_STD = 127.5  # BEiT-3's normalisation (mean = std = 0.5 on [0, 1]), as the segmenter's


class BEiT3PretrainModule(L.LightningModule):
    """Masked data modeling of a :class:`BEiT3Pretrainer` on image-caption batches.

    Args:
        model: the encoder with its heads.
        optimizer: builds the optimizer from parameter groups (AdamW in the configs).
        scheduler: learning-rate schedule stepped every optimizer step; None keeps it constant.
        text_mask_ratio: share of each caption's tokens chosen for prediction (BEiT-3: 0.5 on image-text
            pairs).
        keep_ratio: share of the chosen tokens left unchanged (BERT: 0.1; see ``corrupt_text``).
        replace_ratio: share of the chosen tokens replaced by a random word of the corpus (BERT: 0.1).
        patch_mask_ratio: share of patches masked (BEiT-3: 0.4).
        mim_weight: weight of the masked-image loss beside the masked-language loss.
        itc_weight: weight of VLMo's image-text contrastive loss
            (:func:`~omtseg.modeling.pretraining.image_text_contrastive`); 0, BEiT-3's objective, skips it.
        itm_weight: weight of VLMo's image-text matching loss with hard negatives
            (:func:`~omtseg.modeling.pretraining.image_text_matching`); 0 skips it.
        itm_temperature: the matching's negatives are drawn by softmax(contrast cosine / this). The default
            1.0 draws them nearly uniformly (the cosines lie in [-1, 1]): the shipped world trunk was made
            so. VLMo's 0.07 makes them hard, and on the world the tiny trunk's matching then stays at the
            prior (held-out accuracy 0.66 with 2 negatives per positive; README "Limits").
        swap_groups: groups of interchangeable phrases (e.g. colour words, shape words) for NegCLIP's
            hard negatives: each caption also gets a copy with one phrase swapped for one of its group that
            none of the image's captions mentions (:func:`~omtseg.modeling.pretraining.swap_words`), an
            extra negative in the contrast and the matching. None (the default) makes none.
        max_text_tokens: captions are cut to this many tokens (``<s>``/``</s>`` included).
    """

    def __init__(
        self,
        *,
        model: BEiT3Pretrainer,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        text_mask_ratio: float = 0.5,
        keep_ratio: float = 0.0,
        replace_ratio: float = 0.0,
        patch_mask_ratio: float = 0.4,
        mim_weight: float = 1.0,
        itc_weight: float = 0.0,
        itm_weight: float = 0.0,
        itm_temperature: float = 1.0,
        swap_groups: list[list[str]] | None = None,
        max_text_tokens: int = 64,
    ) -> None:
        super().__init__()
        if max_text_tokens < 3:
            raise ValueError(
                f"max_text_tokens={max_text_tokens} leaves no room for a word between <s> and </s>."
            )
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model: BEiT3Pretrainer = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.text_mask_ratio = text_mask_ratio
        self.keep_ratio = keep_ratio
        self.replace_ratio = replace_ratio
        self.patch_mask_ratio = patch_mask_ratio
        self.mim_weight = mim_weight
        if itc_weight < 0:
            raise ValueError(f"itc_weight={itc_weight} must be >= 0 (0 leaves the contrastive loss out).")
        self.itc_weight = itc_weight
        if itm_weight < 0:
            raise ValueError(f"itm_weight={itm_weight} must be >= 0 (0 leaves image-text matching out).")
        self.itm_weight = itm_weight
        if itm_temperature <= 0:
            raise ValueError(f"itm_temperature={itm_temperature} must be > 0 (VLMo's is 0.07).")
        self.itm_temperature = itm_temperature
        if itm_weight > 0:
            model.enable_matching()
        if swap_groups is not None and (
            not swap_groups
            or any(len(g) < 2 or not all(isinstance(w, str) and w.strip() for w in g) for g in swap_groups)
        ):
            raise ValueError(
                f"swap_groups must be groups of at least 2 non-empty phrases, got {swap_groups!r}."
            )
        if swap_groups is not None and itc_weight == 0 and itm_weight == 0:
            raise ValueError(
                "swap_groups makes negatives for the contrast or the matching: set itc_weight or "
                "itm_weight > 0."
            )
        self.swap_groups = [list(g) for g in swap_groups] if swap_groups is not None else None
        self._image_texts: dict[int, str] = {}
        self.max_text_tokens = max_text_tokens
        self.tokenizer = Beit3Tokenizer()
        self._ids: dict[str, list[int]] = {}
        vocab = model.beit3.text_embed.num_embeddings
        # Masked-token counts of training: the unigram baseline answers their argmax.
        self.train_token_counts: Tensor
        self.register_buffer("train_token_counts", torch.zeros(vocab, dtype=torch.long))
        self._val = torch.zeros(5, dtype=torch.long)  # correct, unigram correct, total; matching right, all

    # ------------------------------------------------------------------------------------------- batches

    def tokenize(self, captions: list[str], cache: bool = True) -> tuple[Tensor, Tensor]:
        """(B, L) ids ``<s> caption </s>`` padded with ``<pad>``, and the (B, L) padding mask.

        ``cache``: remember each caption's ids (the corpus's captions recur every epoch).
        """
        rows: list[list[int]] = []
        for text in captions:
            row = self._ids.get(text)
            if row is None:
                row = [BOS_ID, *self.tokenizer.encode(text)[: self.max_text_tokens - 2], EOS_ID]
                if cache:
                    self._ids[text] = row
            rows.append(row)
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids.to(self.device), (ids == PAD_ID).to(self.device)

    def restrict_output_to(self, captions: list[str]) -> None:
        """Run the masked-language softmax over the ids of ``captions`` only (see pretraining.py)."""
        ids = {i for text in captions for i in self.tokenize([text])[0][0].tolist()}
        self.model.restrict_output(torch.tensor(sorted(ids)))

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        captions = getattr(datamodule, "train_captions", None)
        if captions is not None:
            self.restrict_output_to(captions())
        image_texts = getattr(datamodule, "image_texts", None)
        if self.swap_groups is not None and image_texts is not None:
            self._image_texts = image_texts()

    def swapped_captions(
        self, batch: CaptionBatch, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The batch's word-swapped captions (``swap_groups``): ids, padding and which rows have one.

        What an image shows is read from all of its captions (the datamodule's ``image_texts``), else from
        the caption alone.
        """
        assert self.swap_groups is not None
        rng = random.Random(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        out = []
        for caption, image_id in zip(batch.captions, batch.image_ids, strict=True):
            context = self._image_texts.get(image_id, caption)
            out.append(swap_words(caption, self.swap_groups, context, rng))
        valid = torch.tensor([c is not None for c in out], dtype=torch.bool)
        ids, padding = self.tokenize(
            [c if c is not None else batch.captions[k] for k, c in enumerate(out)], cache=False
        )
        return ids, padding, valid.to(self.device)

    def _losses(self, batch: CaptionBatch, generator: torch.Generator | None) -> PretrainLosses:
        images = (batch.images.float() - PIXEL_MEAN) / PIXEL_STD
        ids, padding = self.tokenize(batch.captions)
        gh, gw = self.model.beit3.patch_grid((images.shape[-2], images.shape[-1]))
        text_mask = mask_text(ids.cpu(), padding.cpu(), self.text_mask_ratio, generator).to(self.device)
        patch_mask = mask_patches(len(ids), gh * gw, self.patch_mask_ratio, generator).to(self.device)
        words = self.model.output_ids
        if words is None:
            words = torch.arange(4, MASK_ID)  # every piece id (after the 4 specials), none of ours
        words = words[(words > UNK_ID) & (words < MASK_ID)]  # no specials, no <mask>
        input_ids = corrupt_text(
            ids,
            text_mask,
            keep=self.keep_ratio,
            replace=self.replace_ratio,
            replacement_ids=words,
            generator=generator,
        )
        return self.model(
            images,
            ids,
            padding,
            text_mask,
            patch_mask,
            input_ids=input_ids,
            contrastive=self.itc_weight > 0,
            matching=self.itm_weight > 0,
            generator=generator,
            negative_temperature=self.itm_temperature,
            swapped=self.swapped_captions(batch, generator) if self.swap_groups is not None else None,
        )

    # --------------------------------------------------------------------------------------------- steps

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> Tensor:
        out = self._losses(batch, None)
        self.train_token_counts += torch.bincount(out.mlm_targets, minlength=self.train_token_counts.numel())
        loss = out.mlm + self.mim_weight * out.mim
        n = len(batch.captions)
        if out.itc is not None:
            loss = loss + self.itc_weight * out.itc
            self.log("train/itc_loss", out.itc, batch_size=n)
        if out.itm is not None:
            loss = loss + self.itm_weight * out.itm
            self.log("train/itm_loss", out.itm, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/mlm_loss", out.mlm, batch_size=n)
        self.log("train/mim_loss", out.mim, batch_size=n)
        self.log("train/mlm_acc", out.mlm_correct.float() / out.mlm_total, prog_bar=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val.zero_()
        self._val_generator = torch.Generator().manual_seed(0)

    def validation_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        out = self._losses(batch, self._val_generator)
        mode = int(self.train_token_counts.argmax())
        itm = [int(out.itm_correct), out.itm_total] if out.itm_correct is not None else [0, 0]
        self._val += torch.tensor(
            [int(out.mlm_correct), int((out.mlm_targets == mode).sum()), out.mlm_total, *itm]
        )
        n = len(batch.captions)
        self.log("val/mlm_loss", out.mlm, batch_size=n)
        self.log("val/mim_loss", out.mim, batch_size=n)
        if out.itc is not None:
            self.log("val/itc_loss", out.itc, batch_size=n)
        if out.itm is not None:
            self.log("val/itm_loss", out.itm, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        correct, unigram, total, itm_correct, itm_total = (int(v) for v in self._val)
        if itm_total:
            self.log("val/itm_acc", itm_correct / itm_total)
        if total:
            self.log("val/mlm_acc", correct / total, prog_bar=True)
            self.log("val/unigram_acc", unigram / total)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(param_groups(self))
        apply_lr_scale(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------------------- export

    def export(self, path: str | Path, *, half: bool = False) -> Path:
        """Write the encoder (and heads) in the official unilm ``.pth`` format, atomically.

        ``half``: the encoder alone (no pre-training heads) in float16, a quarter of the size; loading casts
        it back to the model's float32 (the file the repository ships for the world's tiny trunk).
        """
        path = Path(path)
        if half:
            state = official_state_dict(self.model.beit3)
            state["model"] = {
                k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()
            }
        else:
            state = official_state_dict(self.model.beit3, heads=self.model.heads_state_dict())
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path
