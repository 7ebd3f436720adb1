"""The captioner's LightningModule: trains the segment captioner on region captions, the segmenter frozen.

SCA's recipe: the segmenter (SAM there, OMTSeg here) is fixed, and only the feature mixer (and, at a small
learning rate or not at all, the language model) learns, from region captions (:class:`RegionBatch`).
Its training choices are switches here, each with our default and SCA's value in the argument list:
label smoothing, a separate language-model learning rate, linear warm-up then cosine decay, and a random
subset of regions per image at each step. Each
region is paired with the decoder query whose mask overlaps it most (see :mod:`omtseg.captioning.inference`).
Validation writes captions greedily and logs ``val/cider_d``, ``val/bleu_4``, ``val/rouge_l`` and, where
pycocoevalcap's Java tools run, ``val/meteor``, all on PTB tokens (the official protocol; see
:mod:`omtseg.evaluation.caption`), else on our tokens with a warning that they are not official.

Checkpoints hold the captioner (the LM included, so a checkpoint is self-contained) and the segmenter's
weights as loaded, so a ``.ckpt`` alone restores the whole captioning system. For ``omtseg predict
--captioner_ckpt``, :func:`omtseg.checkpoint.save_captioner` writes the captioner alone with the arguments
that rebuild it, and :func:`omtseg.checkpoint.load_captioner` restores it next to any segmenter of matching
widths. Given ``captioner_arguments`` (``omtseg fit --config configs/caption/...`` gives them), every
Lightning checkpoint of the module is such a captioner checkpoint as well.

``omtseg fit`` builds the module from a config: the segmenter from its ``omtseg fit`` checkpoint
(``segmenter_checkpoint``), the captioner from its arguments, or as a :class:`WordLevelCaptioner` over a tiny
word-level language model written on first use (no hub is reachable here).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import match_queries, segmenter_pass
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import (
    add_captioner_entries,
    load_captioner_weights,
    load_segmenter,
    segmenter_from_checkpoint,
)
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.data.regions import RegionBatch
from omtseg.data.world import world_categories
from omtseg.evaluation.caption import evaluate_captions, gather_captions
from omtseg.modeling.segmenter import OMTSeg
from omtseg.optim import WarmupDecayLR
from omtseg.types import Vocabulary

CAPTIONER_PREFIX = "captioner."
"""Where the captioner's weights sit in the module's ``state_dict``."""


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW at SCA's mixer learning rate (1e-4)."""
    return torch.optim.AdamW(params, lr=1e-4)


def captioner_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The :class:`SegmentCaptioner` keyword arguments among a captioner config's ``init_args`` (those of
    :class:`WordLevelCaptioner` include its language model's own settings, which a rebuild does not take)."""
    own = inspect.signature(SegmentCaptioner).parameters
    return {k: v for k, v in arguments.items() if k in own}


class WordLevelCaptioner(SegmentCaptioner):
    """A :class:`SegmentCaptioner` over a tiny random word-level GPT-2, written to ``language_model`` unless
    it is there already (:func:`~omtseg.captioning.language_model.make_word_level_lm`).

    The open-vocabulary world's captions use a few dozen words: a random LM over exactly them, trained with
    the mixer (``freeze_language_model: false``), stands in for GPT-2, which no hub serves here. Only the
    file comes from this class: its weights are a :class:`SegmentCaptioner`'s, which
    :func:`~omtseg.checkpoint.load_captioner` rebuilds.

    Args:
        language_model: the LM's directory.
        words: its vocabulary; None: every word of the world's synthetic and class-name captions.
        lm_num_layers: GPT-2 blocks of a new LM.
        lm_width: embedding width of a new LM.
        lm_num_heads: attention heads of a new LM.
        **kwargs: the other :class:`SegmentCaptioner` arguments.

    Raises:
        ValueError: an existing LM at ``language_model`` lacks some of ``words``.
    """

    def __init__(
        self,
        *,
        language_model: str,
        words: list[str] | None = None,
        lm_num_layers: int = 2,
        lm_width: int = 64,
        lm_num_heads: int = 2,
        **kwargs: Any,
    ) -> None:
        if words is None:
            seen = Vocabulary.from_names([c["name"] for c in world_categories(("seen",))])
            words = synthetic_caption_words(seen)
        path = Path(language_model)
        if (path / "config.json").is_file():
            vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
            missing = [w for w in words if w not in vocab]
            if missing:
                raise ValueError(
                    f"The language model in {path} lacks the words {missing[:5]}; remove the folder to write "
                    "a new one over these words, or give another language_model folder."
                )
        else:
            make_word_level_lm(path, words, num_layers=lm_num_layers, width=lm_width, num_heads=lm_num_heads)
        super().__init__(language_model=path, **kwargs)


class CaptionerModule(L.LightningModule):
    """Train a :class:`SegmentCaptioner` on region captions over a frozen :class:`OMTSeg`.

    Args:
        segmenter: the segmenter; frozen and kept in eval mode. None: the one of ``segmenter_checkpoint``,
            built from its saved config.
        captioner: the captioner (its LM frozen or not, as it was built); its feature and query widths must be
            the segmenter's.
        class_names: the vocabulary the segmenter is run with (its text branch needs one; the captioner
            reads only image features and queries); ``omtseg fit`` takes the datamodule's.
        segmenter_checkpoint: an ``omtseg fit`` checkpoint loaded into ``segmenter`` at construction.
        captioner_checkpoint: a captioner checkpoint whose weights ``captioner`` starts from (SCA's weak
            pre-training, then Visual Genome); None keeps its initialisation.
        optimizer: builds the optimizer from the trainable parameters (AdamW, lr 1e-4 as SCA's mixer).
        use_query_embed: condition each caption on the best-matching decoder query (SCA's segment token).
        max_caption_tokens: training captions are cut to this many tokens (end token included).
        max_new_tokens: caption length limit when decoding (20 in SCA).
        num_beams: 1 decodes greedily (SCA), more runs beam search.
        official_metrics: score validation with pycocoevalcap's Java tools (PTB tokenizer, METEOR, SPICE where
            set up); False scores on our tokens only (seconds faster, not comparable with papers).
        label_smoothing: of the caption loss (0: none; SCA: 0.1).
        language_model_lr: learning rate of the language model's trainable parameters (when it is not frozen);
            None trains them at the optimizer's rate (SCA trains the LM, if at all, at its own smaller rate).
        warmup_steps: optimizer steps of linear warm-up from 0 (SCA: 200); 0 for none.
        lr_decay: ``"constant"`` or ``"cosine"`` (SCA) to 0 at the trainer's last step.
        regions_per_image: train on at most this many regions of each image per step, drawn at random (SCA:
            16); None trains on all.
        captioner_arguments: the keyword arguments that rebuild ``captioner`` (``SegmentCaptioner(**them)``);
            given, every checkpoint of the module is also a captioner checkpoint for
            :func:`~omtseg.checkpoint.load_captioner` (``omtseg caption --captioner``). ``omtseg fit`` gives
            them from the captioner's config.
    """

    def __init__(
        self,
        *,
        segmenter: OMTSeg | None = None,
        captioner: SegmentCaptioner,
        class_names: list[str],
        segmenter_checkpoint: str | None = None,
        captioner_checkpoint: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        use_query_embed: bool = True,
        max_caption_tokens: int = 32,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        official_metrics: bool = True,
        label_smoothing: float = 0.0,
        language_model_lr: float | None = None,
        warmup_steps: int = 0,
        lr_decay: Literal["constant", "cosine"] = "constant",
        regions_per_image: int | None = None,
        captioner_arguments: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["segmenter", "captioner", "optimizer"])
        if segmenter is None:
            if segmenter_checkpoint is None:
                raise ValueError(
                    "The captioner needs its segmenter: give segmenter_checkpoint, the .ckpt that `omtseg "
                    "fit --config configs/world.yaml` (or any segmenter recipe) wrote."
                )
            segmenter = segmenter_from_checkpoint(segmenter_checkpoint)
        elif segmenter_checkpoint is not None:
            load_segmenter(segmenter, segmenter_checkpoint)
        check_widths(segmenter, captioner)
        if captioner_checkpoint is not None:
            load_captioner_weights(captioner, captioner_checkpoint)
        segmenter.requires_grad_(False)
        self.segmenter = segmenter.eval()
        self.captioner = captioner
        self.vocabulary = Vocabulary.from_names(class_names)
        self.optimizer_factory = optimizer
        self.use_query_embed = use_query_embed
        self.max_caption_tokens = max_caption_tokens
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.official_metrics = official_metrics
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1).")
        if lr_decay not in ("constant", "cosine"):
            raise ValueError(f"lr_decay={lr_decay!r}; choose 'constant' or 'cosine'.")
        if regions_per_image is not None and regions_per_image < 1:
            raise ValueError(f"regions_per_image={regions_per_image}; give None (all) or at least 1.")
        self.label_smoothing = label_smoothing
        self.language_model_lr = language_model_lr
        self.warmup_steps = warmup_steps
        self.lr_decay = lr_decay
        self.regions_per_image = regions_per_image
        self.captioner_arguments = captioner_arguments
        self._predictions: dict[str, str] = {}
        self._references: dict[str, list[str]] = {}

    def train(self, mode: bool = True) -> CaptionerModule:
        """Switch modes; the frozen segmenter stays in eval mode (no dropout, fixed statistics)."""
        super().train(mode)
        self.segmenter.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.captioner_arguments is not None:
            add_captioner_entries(checkpoint, self.captioner_arguments, CAPTIONER_PREFIX)

    def _inputs(self, batch: RegionBatch) -> dict[str, Any]:
        """The captioner's inputs for a batch: features, masks, batch index and matched query embeddings."""
        tap = segmenter_pass(self.segmenter, batch.images, self.vocabulary)
        masks = batch.masks.to(tap.mask_logits.device)
        index = batch.segment_batch_index.to(masks.device)
        query = None
        if self.use_query_embed:
            query = tap.queries[index, match_queries(tap.mask_logits, masks, index)]  # (S, C)
        return dict(features=tap.multi_scale, masks=masks, segment_batch_index=index, query_embed=query)

    def training_step(self, batch: RegionBatch, batch_idx: int) -> Tensor:
        """Teacher-forced loss on each region's first reference caption."""
        if self.regions_per_image is not None:
            batch = batch.sample_regions(self.regions_per_image)
        ids, mask = self.captioner.tokenize([c[0] for c in batch.captions], self.max_caption_tokens)
        loss = self.captioner(
            captions=ids.to(self.device),
            caption_mask=mask.to(self.device),
            label_smoothing=self.label_smoothing,
            **self._inputs(batch),
        )
        self.log("train/caption_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        """The captioner's trainable parameters: the mixer's group, and the LM's at ``language_model_lr``."""
        lm = {id(p) for p in self.captioner.lm.parameters()}
        trainable = [p for p in self.captioner.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": [p for p in trainable if id(p) not in lm]}]
        lm_params = [p for p in trainable if id(p) in lm]
        if lm_params:
            group: dict[str, Any] = {"params": lm_params}
            if self.language_model_lr is not None:
                group["lr"] = self.language_model_lr
            groups.append(group)
        assert sum(len(g["params"]) for g in groups) == len(trainable), "a parameter in no group or in two"
        return groups

    def configure_optimizers(self) -> Any:
        assert all(not p.requires_grad for p in self.segmenter.parameters()), "the segmenter must stay frozen"
        optimizer = self.optimizer_factory(self.param_groups())
        if self.warmup_steps == 0 and self.lr_decay == "constant":
            return optimizer
        max_steps = int(self.trainer.estimated_stepping_batches)
        # From 0 as SCA's schedule (Hugging Face's cosine with warm-up); cosine reaches 0 at the last step.
        schedule = WarmupDecayLR(
            optimizer, max_steps=max_steps, warmup_steps=self.warmup_steps, warmup_factor=0.0,
            decay=self.lr_decay,
        )  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @torch.no_grad()
    def caption(self, batch: RegionBatch) -> list[str]:
        """Captions of every region of a batch (decoding settings of the module)."""
        return self.captioner.generate(
            **self._inputs(batch), max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
        )

    def validation_step(self, batch: RegionBatch, batch_idx: int) -> None:
        for rid, text, refs in zip(batch.region_ids, self.caption(batch), batch.captions, strict=True):
            self._predictions[rid] = text
            self._references[rid] = refs

    def on_validation_epoch_end(self) -> None:
        # Over several processes: all regions, each once (the sampler may have repeated some).
        predictions, references = gather_captions(self._predictions, self._references)
        if predictions:
            result = evaluate_captions(predictions, references, java_metrics=self.official_metrics)
            if not result.official:
                rank_zero_warn(f"Validation caption scores: {result.protocol}.")
            for name, value in result.scores.items():
                self.log(f"val/{name}", value, prog_bar=name == "cider_d")
        self._predictions, self._references = {}, {}

    def predict_step(self, batch: RegionBatch, batch_idx: int) -> list[str]:
        """Captions of every region of the batch."""
        return self.caption(batch)


def check_widths(segmenter: OMTSeg, captioner: SegmentCaptioner) -> None:
    """Raise a clear error when the captioner does not read the segmenter's feature and query widths.

    Raises:
        ValueError: ``feature_dim`` is not the pixel decoder's ``conv_dim``, or ``query_dim`` not the
            decoder's width.
    """
    features = segmenter.pixel_decoder.conv_dim
    queries = segmenter.decoder.decoder_norm.normalized_shape[0]
    proj = captioner.input_proj  # the identity when the features are as wide as the mixer
    width = captioner.caption_queries.shape[1]
    feature_dim = proj.in_features if isinstance(proj, torch.nn.Linear) else width
    query_dim = captioner.query_proj.in_features
    if (feature_dim, query_dim) != (features, queries):
        raise ValueError(
            f"The captioner reads {feature_dim}-wide features and {query_dim}-wide queries but the "
            f"segmenter has {features} and {queries}; set the captioner's feature_dim: {features}, "
            f"query_dim: {queries}."
        )
