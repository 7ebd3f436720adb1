"""Segment captioning in the SCA design: a query-based feature mixer feeding a frozen causal language model.

"Segment and Caption Anything" (Huang et al., CVPR 2024) captions a region from the segmenter's own features:
a few learnable caption queries, together with the segment's decoder query, attend to the image features,
and the image features attend back to the queries (a two-way block, as in SAM's mask decoder). The mixed
caption queries are projected to the language model's width and, with learnable task tokens, form the prefix
after which the causal LM writes the caption::

    [caption queries (Nq) -> Linear -> D] [task tokens (Nt, D)] [caption token embeddings (T, D)]
    [task tokens (Nt, D)] [caption queries (Nq) -> Linear -> D] [caption token embeddings (T, D)]   (SCA)

Where the region comes in (``region_conditioning``):

- ``"hard_mask"`` (default): the caption queries may read only the region's image tokens. A box or mask prompt
  without a decoder query is then still captioned from its own pixels, which is what our prompts need.
- ``"query"`` (SCA): the queries read the whole image; the region enters through the segment's decoder query
  (SCA's segment token) and the embedding that marks the region's tokens (as SAM's dense mask prompt).

SCA's other choices, each a switch here: ``task_tokens_first`` (SCA: True, 6 task tokens), label smoothing
of the loss (``forward(label_smoothing=...)``, SCA: 0.1); its learning rates and schedule are the
LightningModule's (:class:`omtseg.lit_captioner.CaptionerModule`).

Every segment gets its own copy of the image tokens (the back-attention makes them segment dependent), so
memory grows as S x N x C with N the tokens of all levels; caption segments in chunks for large images.

The language model is any Hugging Face causal LM with its tokenizer in a local directory (GPT-2 in SCA);
it is loaded without hub access and frozen by default (SCA's best recipe trains only the mixer).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.captioning.language_model import load_language_model
from omtseg.modeling.position_encoding import sine_position_encoding


def level_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(S, H, W) bool -> (S, h, w) bool: a cell is in the segment when any of its pixels is.

    Max pooling (not bilinear resizing and a threshold) keeps a small segment visible on the coarsest level.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.adaptive_max_pool2d(masks[:, None].float(), size)[:, 0] > 0


class TwoWayMixerLayer(nn.Module):
    """Queries read the segment's image tokens, then the tokens read the queries (post-norm, as SAM).

    ``update_tokens=False`` drops the second half: on a level's last visit its tokens are never read again.
    """

    def __init__(
        self, *, width: int, num_heads: int, ffn_dim: int, dropout: float, update_tokens: bool
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.query_to_image = nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.image_to_query = (
            nn.MultiheadAttention(width, num_heads, dropout=dropout, batch_first=True)
            if update_tokens
            else None
        )
        self.token_norm = nn.LayerNorm(width) if update_tokens else None
        self.num_heads = num_heads

    def forward(self, queries: Tensor, tokens: Tensor, pos: Tensor, blocked: Tensor) -> tuple[Tensor, Tensor]:
        """Mix one level.

        Args:
            queries: (S, Q, C).
            tokens: (S, N, C) the segment's image tokens of this level.
            pos: (1, N, C) their position (and level) codes.
            blocked: (S, N) bool, True at tokens a query may not read (outside the segment).

        Returns:
            Updated queries (S, Q, C) and tokens (S, N, C).
        """
        q = self.norms[0](queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        s, n_q = q.shape[:2]
        attn_mask = blocked[:, None, None, :].expand(s, self.num_heads, n_q, -1).flatten(0, 1)  # (S*h, Q, N)
        read = self.query_to_image(q, tokens + pos, tokens, attn_mask=attn_mask, need_weights=False)[0]
        q = self.norms[1](q + read)
        q = self.norms[2](q + self.ffn(q))
        if self.image_to_query is None or self.token_norm is None:
            return q, tokens
        back = self.image_to_query(tokens + pos, q, q, need_weights=False)[0]
        return q, self.token_norm(tokens + back)


class SegmentCaptioner(nn.Module):
    """Caption segments from multi-scale features with a frozen causal LM (see the module docstring).

    Args:
        language_model: local directory of a Hugging Face causal LM and its tokenizer (``save_pretrained``).
        feature_dim: C of the pixel decoder's multi-scale maps.
        query_dim: width of the segmenter's decoder queries (projected into one extra mixer query).
        width: mixer width (256 in SCA).
        num_layers: mixer layers (12 in SCA); layer i reads level ``i % num_feature_levels``, coarse first.
        num_heads: attention heads of the mixer.
        ffn_dim: FFN width of the mixer.
        num_caption_queries: learnable caption queries, i.e. visual prefix tokens (8 in SCA).
        num_task_tokens: learnable tokens that tell the LM which task follows (one task here, captioning;
            SCA: 6).
        task_tokens_first: put the task tokens before the visual prefix (SCA's order) instead of between it
            and the caption.
        region_conditioning: ``"hard_mask"`` (queries read only the region's tokens) or ``"query"`` (SCA: the
            whole image, the region given by the decoder query and the region-marking embedding); see the
            module docstring.
        num_feature_levels: levels of ``features`` the mixer reads (the pixel decoder's strides 32, 16, 8).
        dropout: attention dropout of the mixer.
        query_dropout: in training, the share of segments whose decoder query is replaced by the learned
            "no query" token, so captioning a bare box (no query) is learnt too.
        freeze_language_model: keep the LM's weights fixed and its dropout off (SCA's best recipe).
    """

    def __init__(
        self,
        *,
        language_model: str | os.PathLike[str],
        feature_dim: int = 256,
        query_dim: int = 256,
        width: int = 256,
        num_layers: int = 12,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_caption_queries: int = 8,
        num_task_tokens: int = 1,
        task_tokens_first: bool = False,
        region_conditioning: Literal["hard_mask", "query"] = "hard_mask",
        num_feature_levels: int = 3,
        dropout: float = 0.0,
        query_dropout: float = 0.1,
        freeze_language_model: bool = True,
    ) -> None:
        super().__init__()
        if region_conditioning not in ("hard_mask", "query"):
            raise ValueError(f"region_conditioning={region_conditioning!r}; choose 'hard_mask' or 'query'.")
        if num_layers < 1 or num_caption_queries < 1 or num_feature_levels < 1:
            raise ValueError(
                f"num_layers ({num_layers}), num_caption_queries ({num_caption_queries}) and "
                f"num_feature_levels ({num_feature_levels}) must all be >= 1."
            )
        self.lm: Any
        self.lm, self.tokenizer = load_language_model(language_model)  # a transformers PreTrainedModel
        lm_dim = self.lm.get_input_embeddings().embedding_dim
        self.input_proj = nn.Linear(feature_dim, width) if feature_dim != width else nn.Identity()
        self.query_proj = nn.Linear(query_dim, width)
        self.caption_queries = nn.Parameter(torch.randn(num_caption_queries, width) * 0.02)
        # Used in place of the segment's decoder query when there is none (a box or point prompt).
        self.no_query = nn.Parameter(torch.zeros(width))
        self.level_embed = nn.Parameter(torch.randn(num_feature_levels, width) * 0.02)
        # Marks the segment's own tokens, so the back-attention writes region-conditioned features.
        self.inside_embed = nn.Parameter(torch.zeros(width))
        self.layers = nn.ModuleList(
            TwoWayMixerLayer(
                width=width,
                num_heads=num_heads,
                ffn_dim=ffn_dim,
                dropout=dropout,
                update_tokens=i < num_layers - num_feature_levels,  # a later layer reads this level again
            )
            for i in range(num_layers)
        )
        self.out_norm = nn.LayerNorm(width)
        self.to_lm = nn.Linear(width, lm_dim)
        self.task_tokens = nn.Parameter(torch.randn(num_task_tokens, lm_dim) * 0.02)
        self.num_feature_levels = num_feature_levels
        self.task_tokens_first = task_tokens_first
        self.region_conditioning = region_conditioning
        self.num_prefix_tokens = num_caption_queries + num_task_tokens
        self.query_dropout = query_dropout
        self.freeze_language_model = freeze_language_model
        if freeze_language_model:
            self.lm.requires_grad_(False)
            self.lm.eval()

    def train(self, mode: bool = True) -> SegmentCaptioner:
        """Switch modes; a frozen LM stays in eval mode so its dropout never perturbs the prefix gradients."""
        super().train(mode)
        if self.freeze_language_model:
            self.lm.eval()
        return self

    # ---------------------------------------------------------------------------------------------- mixer

    def prefix(
        self,
        features: list[Tensor],
        masks: Tensor,
        segment_batch_index: Tensor,
        query_embed: Tensor | None = None,
    ) -> Tensor:
        """Visual prefix and task tokens of each segment.

        Args:
            features: multi-scale maps (B, C, h_l, w_l), coarse first; the first ``num_feature_levels``
                are read.
            masks: (S, H, W) bool segment masks at any resolution covering the same canvas as ``features``;
                an all-False mask reads the whole image (with ``"hard_mask"`` conditioning).
            segment_batch_index: (S,) long image of each segment in the batch.
            query_embed: (S, query_dim) the segments' decoder query embeddings, or None.

        Returns:
            (S, Nq + Nt, D) LM input embeddings.
        """
        if len(features) < self.num_feature_levels:
            raise ValueError(
                f"Captioner reads {self.num_feature_levels} feature levels, got {len(features)}."
            )
        if masks.ndim != 3 or segment_batch_index.shape != masks.shape[:1]:
            raise ValueError(
                f"masks must be (S, H, W) with one batch index per segment; got masks {tuple(masks.shape)} "
                f"and segment_batch_index {tuple(segment_batch_index.shape)}."
            )
        s = masks.shape[0]
        if s == 0:  # attention cannot reshape empty masks; nothing to mix
            return self.task_tokens.new_zeros((0, self.num_prefix_tokens, self.task_tokens.shape[1]))
        masks = masks.bool()
        if query_embed is None:
            extra = self.no_query.expand(s, 1, -1)
        else:
            extra = self.query_proj(query_embed)[:, None]  # (S, 1, C)
            if self.training and self.query_dropout > 0:
                drop = torch.rand(s, 1, 1, device=extra.device) < self.query_dropout
                extra = torch.where(drop, self.no_query.to(extra.dtype), extra)
        queries = torch.cat([self.caption_queries.expand(s, -1, -1), extra], dim=1)  # (S, Nq + 1, C)
        empty = ~masks.flatten(1).any(1)  # (S,)
        tokens, pos, blocked = [], [], []
        for level, fmap in enumerate(features[: self.num_feature_levels]):
            h, w = fmap.shape[-2:]
            x = self.input_proj(fmap.flatten(2).transpose(1, 2))[segment_batch_index]  # (S, h*w, C)
            inside = level_masks(masks, (h, w)).flatten(1) & ~empty[:, None]  # (S, h*w)
            tokens.append(x + inside[..., None].to(x.dtype) * self.inside_embed)
            code = sine_position_encoding(h, w, x.shape[-1], device=x.device, dtype=x.dtype)  # (C, h, w)
            pos.append(code.flatten(1).t()[None] + self.level_embed[level])  # (1, h*w, C)
            # SCA's mixer reads every token: the region is only marked (inside_embed) and given by the query.
            blocked.append(~inside & ~empty[:, None] & (self.region_conditioning == "hard_mask"))
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            queries, tokens[level] = layer(queries, tokens[level], pos[level], blocked[level])
        visual = self.to_lm(self.out_norm(queries[:, : self.caption_queries.shape[0]]))  # (S, Nq, D)
        task = self.task_tokens.expand(s, -1, -1)  # (S, Nt, D)
        return torch.cat([task, visual] if self.task_tokens_first else [visual, task], dim=1)

    # ------------------------------------------------------------------------------------------ training

    def tokenize(self, captions: list[str], max_tokens: int = 32) -> tuple[Tensor, Tensor]:
        """Token ids for teacher forcing: each caption followed by the end-of-text token, right padded.

        Args:
            captions: S strings.
            max_tokens: T at most (longer captions are cut; their end token is kept).

        Returns:
            ids (S, T) long and mask (S, T) bool (True at real tokens), on the CPU.
        """
        eos = self.tokenizer.eos_token_id
        rows = [
            self.tokenizer(c.strip(), add_special_tokens=False)["input_ids"][: max_tokens - 1] + [eos]
            for c in captions
        ]
        t = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), t), eos, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def forward(
        self,
        features: list[Tensor],
        masks: Tensor,
        segment_batch_index: Tensor,
        captions: Tensor,
        caption_mask: Tensor | None = None,
        query_embed: Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """Teacher-forced captioning loss: mean cross-entropy over the caption tokens of all segments.

        Args:
            features, masks, segment_batch_index, query_embed: as in :meth:`prefix`.
            captions: (S, T) long token ids (see :meth:`tokenize`).
            caption_mask: (S, T) bool, True at real tokens; None when no caption is padded.
            label_smoothing: share of each target's probability spread over the vocabulary (SCA: 0.1).

        Returns:
            Scalar loss; zero (still connected to the trainable weights) when S = 0.
        """
        if captions.shape[0] != masks.shape[0]:
            raise ValueError(
                f"Got {captions.shape[0]} captions for {masks.shape[0]} segments; give one each."
            )
        if masks.shape[0] == 0:
            return sum((p.sum() * 0 for p in self.parameters() if p.requires_grad), torch.zeros(()))
        if caption_mask is None:
            caption_mask = torch.ones_like(captions, dtype=torch.bool)
        prefix = self.prefix(features, masks, segment_batch_index, query_embed)  # (S, P, D)
        text = self.lm.get_input_embeddings()(captions)  # (S, T, D)
        inputs = torch.cat([prefix, text.to(prefix.dtype)], dim=1)  # (S, P + T, D)
        attention = torch.cat([caption_mask.new_ones(prefix.shape[:2]), caption_mask], dim=1)
        logits = self.lm(inputs_embeds=inputs, attention_mask=attention.long()).logits
        p = prefix.shape[1]
        # Position p - 1 (the last prefix token) predicts the first caption token, and so on.
        pred = logits[:, p - 1 : -1]  # (S, T, V)
        targets = captions[caption_mask]
        return F.cross_entropy(pred[caption_mask].float(), targets, label_smoothing=label_smoothing)

    # -------------------------------------------------------------------------------------------- decode

    @torch.no_grad()
    def generate(
        self,
        features: list[Tensor],
        masks: Tensor,
        segment_batch_index: Tensor,
        query_embed: Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        num_beams: int = 1,
    ) -> list[str]:
        """Captions of S segments: greedy decoding (``num_beams=1``, SCA's setting) or beam search.

        Args:
            features, masks, segment_batch_index, query_embed: as in :meth:`prefix`.
            max_new_tokens: caption length limit in tokens (20 in SCA).
            num_beams: beams per segment.

        Returns:
            S captions, stripped, without special tokens.
        """
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and num_beams ({num_beams}) must be >= 1.")
        if masks.shape[0] == 0:
            return []
        prefix = self.prefix(features, masks, segment_batch_index, query_embed)
        eos = self.tokenizer.eos_token_id
        out = self.lm.generate(
            inputs_embeds=prefix,
            attention_mask=prefix.new_ones(prefix.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        return [c.strip() for c in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
