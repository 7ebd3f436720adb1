"""Mask2Former's masked-attention transformer decoder, classifying queries against <WLS> text features.

Each layer: masked cross-attention on one image scale (round-robin over the three scales, coarsest first),
then cross-attention on the projected <WLS> text features (OMTSeg's addition), then self-attention among
queries, then an FFN; post-norm as in Mask2Former. A prediction follows the query initialisation and every
layer, and the masks of each prediction restrict the next layer's image cross-attention to
``sigmoid(mask) >= 0.5``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.position_encoding import sine_position_encoding
from omtseg.types import Predictions


@torch.no_grad()
def attention_mask(mask_logits: Tensor, *, size: tuple[int, int], num_heads: int) -> Tensor:
    """Where each query may not look in the next masked cross-attention.

    Args:
        mask_logits: (B, Q, h, w) predicted masks.
        size: (H_l, W_l) of the scale attended next.
        num_heads: attention heads (repeated per head, batch-major, as nn.MultiheadAttention wants).

    Returns:
        (B*heads, Q, H_l*W_l) bool, True where ``sigmoid(mask) < 0.5`` at that scale, except that a query
        whose mask is empty there sees everything (attending to nothing would be undefined).
    """
    low = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = low.flatten(2) < 0.0  # sigmoid < 0.5, (B, Q, H_l*W_l)
    # Out of place: ONNX export has no in-place boolean and (aten::__iand_).
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them. (..., C_in) -> (..., C_out)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    """Masked image cross-attention -> text cross-attention -> self-attention -> FFN (each post-norm)."""

    def __init__(self, *, dim: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.image_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.text_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(
        self,
        x: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        attn_mask: Tensor,
        text: Tensor,
        text_padding_mask: Tensor | None,
    ) -> Tensor:
        """One layer.

        Args:
            x: (B, Q, C) query features.
            query_pos: (B, Q, C) query positions.
            memory: (B, HW, C) image features of this layer's scale.
            memory_pos: (B, HW, C) their positions.
            attn_mask: (B*heads, Q, HW) True where a query may not look.
            text: (B, P, C) projected <WLS> features.
            text_padding_mask: (B, P) True at padding, or None.

        Returns:
            (B, Q, C) updated queries.
        """
        out = self.image_attn(
            x + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False
        )
        x = self.norms[0](x + out[0])
        # Key and value as distinct tensors under ONNX export: PyTorch's packed key-is-value projection
        # traces the number of text entries as a constant, fixing an exported graph's vocabulary size.
        value = text.clone() if torch.onnx.is_in_onnx_export() else text
        out = self.text_attn(
            x + query_pos, text, value, key_padding_mask=text_padding_mask, need_weights=False
        )
        x = self.norms[1](x + out[0])
        q = x + query_pos
        x = self.norms[2](x + self.self_attn(q, q, x, need_weights=False)[0])
        return self.norms[3](x + self.ffn(x))


class OpenVocabDecoder(nn.Module):
    """Q learnable queries decoded into masks, objectness and cosine-similarity class logits.

    Args:
        in_channels: channels of the pixel decoder's multi-scale features.
        hidden_dim: query width C.
        num_queries: Q.
        num_heads: attention heads.
        dim_feedforward: FFN width.
        num_layers: decoder layers (9 = three rounds over three scales).
        mask_dim: channels of the mask features.
        text_dim: width of the <WLS> text features (the backbone's embed dim).
        num_scales: image scales cycled through.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 256,
        text_dim: int = 768,
        num_scales: int = 3,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads != 0 or hidden_dim % 4 != 0:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads} and by 4.")
        self.num_heads = num_heads
        self.num_scales = num_scales
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_scales, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_scales)
        )
        self.layers = nn.ModuleList(
            DecoderLayer(dim=hidden_dim, num_heads=num_heads, dim_feedforward=dim_feedforward)
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, hidden_dim)
        self.objectness = nn.Linear(hidden_dim, 1)
        self.mask_embed = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=mask_dim, num_layers=3)
        # CLIP's temperature: starts at 1/0.07 and may learn up to 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.max_logit_scale = math.log(100.0)

    def forward(
        self,
        multi_scale: list[Tensor],
        mask_features: Tensor,
        text: Tensor,
        text_padding_mask: Tensor | None = None,
    ) -> Predictions:
        """Decode queries against image and text.

        Args:
            multi_scale: ``num_scales`` maps (B, C_in, H_l, W_l), coarsest first (strides 32, 16, 8).
            mask_features: (B, mask_dim, H/4, W/4).
            text: (B, P, D_t) <WLS> features, one per prompt entry.
            text_padding_mask: (B, P) True at padded entries (their logits are the dtype's minimum).

        Returns:
            The last layer's prediction with class logits (B, Q, P), objectness (B, Q) and masks
            (B, Q, H/4, W/4); ``aux`` holds the ``num_layers`` earlier ones (query init first).
        """
        if len(multi_scale) != self.num_scales:
            raise ValueError(f"Expected {self.num_scales} feature maps, got {len(multi_scale)}.")
        if text_padding_mask is not None and bool(text_padding_mask.all(1).any()):
            raise ValueError(
                "text_padding_mask pads every prompt entry of an image; each image needs one class."
            )
        b = mask_features.shape[0]
        memories, memory_pos, sizes = [], [], []
        for level, (feat, proj) in enumerate(zip(multi_scale, self.input_proj, strict=True)):
            h, w = feat.shape[-2:]
            sizes.append((h, w))
            pos = sine_position_encoding(
                h, w, self.level_embed.embedding_dim, device=feat.device, dtype=feat.dtype
            )
            memory_pos.append(pos.flatten(1).T[None].expand(b, -1, -1))  # (B, HW, C)
            memories.append(
                proj(feat).flatten(2).transpose(1, 2) + self.level_embed.weight[level]
            )  # (B, HW, C)
        text_memory = self.text_proj(text)  # (B, P, C)
        text_class = F.normalize(text_memory, dim=-1)
        query_pos = self.query_pos.weight[None].expand(b, -1, -1)  # (B, Q, C)
        x = self.query_feat.weight[None].expand(b, -1, -1)

        def predict(x: Tensor, level: int) -> tuple[Predictions, Tensor]:
            return self._predict(x, mask_features, text_class, text_padding_mask, attn_hw=sizes[level])

        pred, attn_mask = predict(x, 0)
        outputs = [pred]
        for i, layer in enumerate(self.layers):
            level = i % self.num_scales
            x = layer(
                x, query_pos, memories[level], memory_pos[level], attn_mask, text_memory, text_padding_mask
            )
            pred, attn_mask = predict(x, (i + 1) % self.num_scales)
            outputs.append(pred)
        final = outputs.pop()
        final.aux = outputs
        return final

    def _predict(
        self,
        x: Tensor,
        mask_features: Tensor,
        text_class: Tensor,
        text_padding_mask: Tensor | None,
        *,
        attn_hw: tuple[int, int],
    ) -> tuple[Predictions, Tensor]:
        """Heads on queries x (B, Q, C) and the next layer's attention mask (B*heads, Q, h*w)."""
        x = self.decoder_norm(x)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        scale = self.logit_scale.clamp(max=self.max_logit_scale).exp()
        class_logits = (
            scale * F.normalize(self.class_embed(x), dim=-1) @ text_class.transpose(1, 2)
        )  # (B, Q, P)
        if text_padding_mask is not None:
            class_logits = class_logits.masked_fill(
                text_padding_mask[:, None], torch.finfo(class_logits.dtype).min
            )
        objectness = self.objectness(x).squeeze(-1)
        attn_mask = attention_mask(mask_logits, size=attn_hw, num_heads=self.num_heads)
        return Predictions(
            class_logits=class_logits, objectness_logits=objectness, mask_logits=mask_logits
        ), attn_mask
