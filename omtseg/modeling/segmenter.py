"""OMTSeg, the composition root: frozen BEiT-3 + visual adapter + <WLS> prompts + Mask2Former head.

One forward pass: images are normalised (BEiT-3's mean = std = 0.5) and zero-padded to a multiple of 32; the
vocabulary becomes prompt chunks (``<s><WLS>name;<WLS>name;...</s>``, cached per vocabulary); each chunk runs
through the adapter-wrapped BEiT-3 together with the image, and the final states at the ``<WLS>`` tokens are
the P prompt-entry features; the pixel decoder and the transformer decoder turn the image features into Q
masks whose queries are scored against those features. Synonyms are then reduced to the K classes by taking,
per class, the **max** logit over its entries: a class is as present as its best-matching name (averaging
would let a poor synonym drag a good one down; FC-CLIP reduces templates the same way).

Text attention (``text_attention``, see :mod:`omtseg.modeling.prompts`): ``"sequential"`` is the paper's joint
prompt (all names in one sequence, full attention); ``"per_name"`` gives each name its own positions and
lets it attend to the image and itself only, so its feature does not depend on the other names or their
order, in one pass whatever K; ``"one_way"`` also keeps the image from attending to the names.

Ablation switches: ``cross_modal=False`` encodes the text in a separate text-only BEiT-3 pass (so its features
are image independent and cached per vocabulary while the weights do not change), ``visual_adapter=False``
swaps the adapter for a simple deconv/pool pyramid, ``prompt_tuning=False`` freezes the <WLS> vector.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.adapter import VisualAdapter
from omtseg.modeling.backbone.beit3 import BEiT3, beit3_base, beit3_large, beit3_tiny, load_beit3_checkpoint
from omtseg.modeling.backbone.entry_attention import EntryLayout
from omtseg.modeling.frozen_trunk import SIZE_DIVISOR, encode_text
from omtseg.modeling.pixel_decoder import MSDeformPixelDecoder
from omtseg.modeling.postprocess import TASKS, batch_results
from omtseg.modeling.prompts import PromptChunk, PromptEncoder, prompt_attention_mask
from omtseg.modeling.simple_pyramid import SimplePyramid
from omtseg.modeling.transformer_decoder import OpenVocabDecoder
from omtseg.types import Batch, ImageResult, Predictions, Vocabulary

BackboneName = Literal["tiny", "base", "large"]
TextAttention = Literal["sequential", "per_name", "one_way"]
PRESETS: dict[str, tuple[Callable[..., BEiT3], int]] = {
    # name -> (factory, BEiT-3 heads; ViT-Adapter uses as many deformable heads as the trunk has)
    "tiny": (beit3_tiny, 4),
    "base": (beit3_base, 12),
    "large": (beit3_large, 16),
}
PIXEL_MEAN = 127.5  # BEiT-3 normalises [0, 1] images with mean 0.5 and std 0.5, i.e. 127.5 on 0-255
PIXEL_STD = 127.5
TRAINABLE_PREFIXES = ("adapter.backbone", "adapter", "prompts", "pixel_decoder", "decoder")


def reduce_synonyms(pred: Predictions, prompt_class: Tensor, num_classes: int) -> Predictions:
    """Per class, the max class logit over its prompt entries, for ``pred`` and each of its ``aux``.

    Args:
        pred: predictions with class logits (B, Q, P) over prompt entries.
        prompt_class: (P,) long class of each entry; every class in ``0..K-1`` has at least one.
        num_classes: K.

    Returns:
        The same predictions with class logits (B, Q, K).
    """

    def one(p: Predictions) -> Predictions:
        b, q, _ = p.class_logits.shape
        index = prompt_class.view(1, 1, -1).expand(b, q, -1)
        logits = p.class_logits.new_full((b, q, num_classes), float("-inf"))
        logits = logits.scatter_reduce(-1, index, p.class_logits, reduce="amax", include_self=False)
        return Predictions(
            class_logits=logits, objectness_logits=p.objectness_logits, mask_logits=p.mask_logits
        )

    out = one(pred)
    out.aux = [one(a) for a in pred.aux]
    return out


class OMTSeg(nn.Module):
    """Open-vocabulary panoptic segmenter (see the module docstring for the data flow and switches).

    Args:
        backbone: BEiT-3 preset: "tiny" (tests, demos), "base" or "large" (the paper's).
        img_size: image side BEiT-3's vision position table is built for (the checkpoint's, usually 224);
            other input sizes resample it.
        patch_size: BEiT-3's patch side: 16 for every official checkpoint; the open-vocabulary world's
            tiny trunk uses 8, so its 64-pixel images hold an 8 x 8 grid (a shape spans several patches).
        activation_checkpointing: recompute BEiT-3 blocks in backward to save memory.
        cross_modal: joint image-text BEiT-3 passes (True, the paper) or a separate text pass (False).
        text_attention: ``"sequential"`` (the paper's prompt), ``"per_name"`` or ``"one_way"`` (see the
            module docstring).
        visual_adapter: ViT-Adapter interactions (True, the paper) or a simple pyramid (False).
        prompt_tuning: learn the <WLS> vector (True, the paper) or keep it at its start (False).
        adapter_channels: channels of the backbone pyramid ``f1..f4``; None keeps BEiT-3's width.
        adapter_num_heads: deformable-attention heads of the adapter; None uses the trunk's head count.
        max_text_tokens: prompt tokens per backbone pass (longer vocabularies take several passes).
        conv_dim: pixel decoder width (channels of the multi-scale maps).
        mask_dim: channels of the stride-4 mask features.
        num_pixel_decoder_layers: deformable encoder layers of the pixel decoder.
        hidden_dim: query width of the transformer decoder.
        num_queries: Q, masks predicted per image.
        num_decoder_layers: transformer decoder layers (each followed by a supervised prediction).
        num_heads: attention heads of the pixel decoder and the transformer decoder.
        decoder_feedforward: FFN width of the transformer decoder.
        pixel_decoder_feedforward: FFN width of the pixel decoder's encoder.
        object_threshold: panoptic keeps queries with ``max_k p(k) * p(object)`` above this.
        overlap_threshold: panoptic drops queries whose visible share of their mask is below this.
        instance_top_k: instances kept per image.
        seen_class_penalty: calibrated stacking (Chao et al., 2016) at inference: subtracted from the class
            logit of every class whose name was a training class (:attr:`trained_names`, recorded while
            training and kept in the checkpoint), so names the head never learned can win a query at all.
            0 (the paper) leaves predictions unchanged; training never sees it. Choose it on validation
            images holding untrained classes (:func:`omtseg.evaluation.calibration.sweep_seen_penalty`).
        vocabulary_cache_size: vocabularies whose tokenisation (and text features when not cross-modal)
            are kept; training samples a new vocabulary per batch, so the cache is bounded.
    """

    def __init__(
        self,
        *,
        backbone: BackboneName = "base",
        img_size: int = 224,
        patch_size: int = 16,
        activation_checkpointing: bool = False,
        cross_modal: bool = True,
        text_attention: TextAttention = "sequential",
        visual_adapter: bool = True,
        prompt_tuning: bool = True,
        adapter_channels: int | None = None,
        adapter_num_heads: int | None = None,
        max_text_tokens: int = 1022,
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_pixel_decoder_layers: int = 6,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_decoder_layers: int = 9,
        num_heads: int = 8,
        decoder_feedforward: int = 2048,
        pixel_decoder_feedforward: int = 1024,
        object_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        instance_top_k: int = 100,
        seen_class_penalty: float = 0.0,
        vocabulary_cache_size: int = 16,
    ) -> None:
        super().__init__()
        if backbone not in PRESETS:
            raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(PRESETS)}.")
        factory, trunk_heads = PRESETS[backbone]
        trunk = factory(
            img_size=img_size, patch_size=patch_size, activation_checkpointing=activation_checkpointing
        )
        wrapper_kw: dict[str, Any] = dict(
            backbone=trunk, out_channels=adapter_channels, cross_modal=cross_modal
        )
        if visual_adapter:
            num = trunk_heads if adapter_num_heads is None else adapter_num_heads
            self.adapter: VisualAdapter | SimplePyramid = VisualAdapter(num_heads=num, **wrapper_kw)
        else:
            self.adapter = SimplePyramid(**wrapper_kw)
        self.prompts = PromptEncoder(
            embed_dim=trunk.embed_dim, max_text_tokens=max_text_tokens, learnable=prompt_tuning
        )
        self.prompts.init_from(trunk.text_embed)
        self.pixel_decoder = MSDeformPixelDecoder(
            input_shapes=self.adapter.output_shapes(),
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            num_layers=num_pixel_decoder_layers,
            num_heads=num_heads,
            dim_feedforward=pixel_decoder_feedforward,
        )
        self.decoder = OpenVocabDecoder(
            in_channels=conv_dim,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            num_heads=num_heads,
            dim_feedforward=decoder_feedforward,
            num_layers=num_decoder_layers,
            mask_dim=mask_dim,
            text_dim=trunk.embed_dim,
        )
        if text_attention not in ("sequential", "per_name", "one_way"):
            raise ValueError(
                f"text_attention={text_attention!r}; choose 'sequential', 'per_name' or 'one_way'."
            )
        self.cross_modal = cross_modal
        self.text_attention = text_attention
        self.object_threshold = object_threshold
        self.overlap_threshold = overlap_threshold
        self.instance_top_k = instance_top_k
        if seen_class_penalty < 0:
            raise ValueError(f"seen_class_penalty must be >= 0 (logit units), got {seen_class_penalty}.")
        self.seen_class_penalty = seen_class_penalty
        self._trained_names: frozenset[str] = frozenset()
        self._noted: set[Vocabulary] = set()  # vocabularies already in trained_names
        self.vocabulary_cache_size = vocabulary_cache_size
        self._chunk_cache: OrderedDict[Vocabulary, list[PromptChunk]] = OrderedDict()
        self._text_cache: OrderedDict[tuple[Vocabulary, str, int], Tensor] = OrderedDict()

    @property
    def backbone(self) -> BEiT3:
        """The frozen BEiT-3 trunk (registered under ``adapter.backbone``)."""
        return self.adapter.backbone

    def load_backbone_weights(self, path_or_state_dict: Any) -> None:
        """Load official BEiT-3 weights into the trunk and restart <WLS> from the loaded ``<s>`` row."""
        load_beit3_checkpoint(self.backbone, path_or_state_dict)
        self.prompts.init_from(self.backbone.text_embed)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by module prefix (longest prefix wins; the frozen BEiT-3 weights are absent).

        Keys are :data:`TRAINABLE_PREFIXES`: ``adapter.backbone`` (BEiT-3's position tables), ``adapter``,
        ``prompts`` (<WLS>), ``pixel_decoder`` and ``decoder``; each parameter appears exactly once.
        """
        groups: dict[str, list[nn.Parameter]] = {p: [] for p in TRAINABLE_PREFIXES}
        for name, param in self.named_parameters():
            if param.requires_grad:
                owner = next(p for p in TRAINABLE_PREFIXES if name.startswith(p + "."))
                groups[owner].append(param)
        return groups

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 or float 0-255 -> normalised float, black-padded to a multiple of 32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}.")
        x = images.float() if not images.is_floating_point() else images
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % SIZE_DIVISOR, -w % SIZE_DIVISOR
        x = F.pad(x, (0, pad_w, 0, pad_h))  # pad raw pixels so padding is black, as batch collation pads
        return (x - PIXEL_MEAN) / PIXEL_STD

    def forward(self, images: Tensor, vocabulary: Vocabulary) -> Predictions:
        """Masks, objectness and class logits of every query.

        Args:
            images: (B, 3, H, W) uint8 or float in 0-255, any size (padded here to a multiple of 32).
            vocabulary: the K classes to segment with.

        Returns:
            Class logits (B, Q, K), objectness (B, Q) and mask logits (B, Q, H'/4, W'/4) over the padded
            image H' x W', with the earlier decoder predictions in ``aux``.
        """
        x = self.preprocess(images)
        chunks = self._chunks(vocabulary, x.device)
        if self.cross_modal:
            features, wls = self._joint_passes(x, chunks)
        else:
            features = self.adapter(x).features
            wls = self._text_features(vocabulary, chunks).expand(x.shape[0], -1, -1)
        mask_features, multi_scale = self.pixel_decoder(features)
        pred = self.decoder(multi_scale, mask_features, wls)
        prompt_class = torch.cat([c.prompt_class for c in chunks])
        return reduce_synonyms(pred, prompt_class, len(vocabulary))

    @property
    def trained_names(self) -> frozenset[str]:
        """Normalised names of the classes this model was trained on (kept in every checkpoint)."""
        return self._trained_names

    @trained_names.setter
    def trained_names(self, names: frozenset[str]) -> None:
        self._trained_names = frozenset(names)
        self._noted = set()

    def note_trained(self, vocabulary: Vocabulary) -> None:
        """Record every name of ``vocabulary`` as a training class (see ``seen_class_penalty``); called each
        training step with the dataset's vocabulary, so a vocabulary already recorded costs one lookup."""
        if vocabulary in self._noted:
            return
        names = {normalize_name(n) for synonyms in vocabulary.synonyms for n in synonyms}
        self._trained_names = self._trained_names | names
        self._noted.add(vocabulary)

    def class_penalty(self, vocabulary: Vocabulary, penalty: float | None = None) -> Tensor | None:
        """(K,) what calibration subtracts from each class logit: ``penalty`` (default
        ``seen_class_penalty``) where any of the class's names is a training class, else 0; None when
        nothing is subtracted."""
        penalty = self.seen_class_penalty if penalty is None else penalty
        if penalty and not self.trained_names:
            raise ValueError(
                f"seen_class_penalty={penalty:g} lowers the classes this model was trained on, but it "
                "records none (a checkpoint written before omtseg kept them, or an untrained model): "
                "retrain, or set model.trained_names = frozenset(<the training class names>) in Python."
            )
        return seen_class_offsets(vocabulary, self.trained_names, penalty)

    @torch.no_grad()
    def predict(
        self,
        batch: Batch,
        tasks: Sequence[str] = TASKS,
        *,
        object_threshold: float | None = None,
        overlap_threshold: float | None = None,
        top_k: int | None = None,
        seen_class_penalty: float | None = None,
    ) -> list[ImageResult]:
        """Post-processed results at each image's original size (crop padding, resize, undo flips).

        Args:
            batch: images (B, 3, H, W), their infos and the vocabulary.
            tasks: any of "panoptic", "semantic", "instance".
            object_threshold: overrides the model's panoptic ``object_threshold``.
            overlap_threshold: overrides the model's ``overlap_threshold``.
            top_k: overrides the model's ``instance_top_k``.
            seen_class_penalty: overrides the model's ``seen_class_penalty``.
        """
        pred = self(batch.images, batch.vocabulary)
        h, w = batch.images.shape[-2:]
        canvas = (h + (-h % SIZE_DIVISOR), w + (-w % SIZE_DIVISOR))
        class_logits = pred.class_logits
        penalty = self.class_penalty(batch.vocabulary, seen_class_penalty)
        if penalty is not None:
            class_logits = class_logits - penalty.to(class_logits)
        return batch_results(
            class_logits,
            pred.objectness_logits,
            pred.mask_logits,
            infos=batch.infos,
            canvas_hw=canvas,
            is_thing=batch.vocabulary.is_thing,
            tasks=tasks,
            object_threshold=self.object_threshold if object_threshold is None else object_threshold,
            overlap_threshold=self.overlap_threshold if overlap_threshold is None else overlap_threshold,
            top_k=self.instance_top_k if top_k is None else top_k,
        )

    # ------------------------------------------------------------------------------------------------ text

    def _chunks(self, vocabulary: Vocabulary, device: torch.device) -> list[PromptChunk]:
        chunks = self._chunk_cache.get(vocabulary)
        if chunks is None or chunks[0].text_ids.device != device:
            per_name = self.text_attention != "sequential"
            chunks = [c.to(device) for c in self.prompts.tokenize(vocabulary, per_name=per_name)]
        _remember(self._chunk_cache, vocabulary, chunks, self.vocabulary_cache_size)
        return chunks

    def _text_embeds(self, chunk: PromptChunk) -> Tensor:
        """(1, L, D) input embeddings of a chunk, the learnable <WLS> vector substituted."""
        return self.prompts.embed_text(self.backbone.text_embed, chunk.text_ids)[None]

    def _joint_passes(self, x: Tensor, chunks: list[PromptChunk]) -> tuple[dict[str, Tensor], Tensor]:
        """One image+text pass per chunk: features averaged over passes, (B, P, D) <WLS> states."""
        features: dict[str, Tensor] = {}
        wls = []
        for chunk in chunks:
            mask: Tensor | EntryLayout | None = None
            if self.text_attention != "sequential":
                gh, gw = self.backbone.patch_grid((x.shape[-2], x.shape[-1]))
                vision_len = 1 + gh * gw  # CLS + patches
                per_name = self.text_attention == "per_name"
                if torch.jit.is_tracing():  # ONNX export: the layout's grouping would be traced as constants
                    mask = prompt_attention_mask(vision_len, chunk.entry, image_attends_text=per_name)
                else:
                    mask = EntryLayout(vision_len, chunk.entry, image_attends_text=per_name)
            out = self.adapter(x, self._text_embeds(chunk), chunk.text_positions, attn_mask=mask)
            assert out.text is not None
            wls.append(out.text[:, chunk.wls_index])  # (B, P_c, D)
            for k, v in out.features.items():
                features[k] = features[k] + v if k in features else v
        return {k: v / len(chunks) for k, v in features.items()}, torch.cat(wls, dim=1)

    def _text_features(self, vocabulary: Vocabulary, chunks: list[PromptChunk]) -> Tensor:
        """(1, P, D) <WLS> states of a text-only pass, cached in eval mode while the weights are unchanged."""
        # In-place updates (optimizer steps, load_state_dict) bump tensor versions: a changed weight misses.
        version = sum(p._version for p in (self.prompts.wls, *self.backbone.parameters()))
        key = (vocabulary, str(chunks[0].text_ids.device), version)
        cached = self._text_cache.get(key)
        if cached is not None and not self.training and not torch.is_grad_enabled():
            return cached
        wls = []
        for c in chunks:
            mask = None
            if self.text_attention != "sequential":
                mask = EntryLayout(0, c.entry, image_attends_text=False)  # each name reads itself only
            states = encode_text(self.backbone, self._text_embeds(c), c.text_positions, attn_mask=mask)
            wls.append(states[:, c.wls_index])
        text = torch.cat(wls, dim=1)  # (1, P, D)
        if not self.training and not torch.is_grad_enabled():
            _remember(self._text_cache, key, text, self.vocabulary_cache_size)
        return text


def normalize_name(name: str) -> str:
    """A class name as compared with the training names: lower case, single spaces."""
    return " ".join(name.lower().split())


def seen_class_offsets(
    vocabulary: Vocabulary, trained_names: Collection[str], penalty: float
) -> Tensor | None:
    """(K,) float32: ``penalty`` for each class with a name among ``trained_names`` (normalised), else 0;
    None when nothing would be subtracted (no penalty, or no training names known)."""
    if penalty == 0 or not trained_names:
        return None
    trained = {normalize_name(n) for n in trained_names}
    seen = [any(normalize_name(n) in trained for n in names) for names in vocabulary.synonyms]
    return torch.tensor(seen, dtype=torch.float32) * penalty


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert into a least-recently-used cache of at most ``size`` entries."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
