"""Multiway components of BEiT-3: vision (``A``) / text (``B``) expert pairs and the block built from them.

Every module takes the vision/text split as the explicit ``vision_len`` argument: tokens ``[:vision_len]``
go to expert ``A``, the rest to ``B``. Parameter names follow torchscale's ``EncoderLayer``, so official
checkpoint keys load unchanged below ``encoder.layers.i`` (see :mod:`omtseg.modeling.backbone.beit3`).

Shape letters: B batch, N tokens (vision then text), D width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omtseg.modeling.backbone.entry_attention import EntryLayout, entry_attention


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability p; rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Multiway(nn.Module):
    """Two experts of one module: ``A`` on the first ``vision_len`` tokens, ``B`` on the rest (dim 1)."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.A = a
        self.B = b

    def forward(self, x: Tensor, vision_len: int) -> Tensor:
        """(B, N, *) -> (B, N, *'), the expert chosen per token by its position."""
        if vision_len >= x.shape[1]:
            return self.A(x)
        if vision_len == 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :vision_len]), self.B(x[:, vision_len:])], dim=1)


class FeedForward(nn.Module):
    """fc1 -> GELU -> LayerNorm (sub-LN) -> fc2; parameter names follow torchscale."""

    def __init__(self, *, embed_dim: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.ffn_layernorm = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


def multiway_linear(dim: int) -> Multiway:
    return Multiway(nn.Linear(dim, dim), nn.Linear(dim, dim))


def multiway_norm(dim: int, eps: float) -> Multiway:
    return Multiway(nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps))


class MultiwayAttention(nn.Module):
    """Joint self-attention over vision and text tokens with per-modality projections and sub-LN."""

    def __init__(self, *, embed_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.q_proj = multiway_linear(embed_dim)
        self.k_proj = multiway_linear(embed_dim)
        self.v_proj = multiway_linear(embed_dim)
        self.inner_attn_ln = multiway_norm(embed_dim, eps)
        self.out_proj = multiway_linear(embed_dim)

    def _qkv(self, x: Tensor, expert: str) -> Tensor:
        # One matmul for q, k and v of one modality: the weights are tiny next to the activations.
        projs = [getattr(p, expert) for p in (self.q_proj, self.k_proj, self.v_proj)]
        weight = torch.cat([p.weight for p in projs], dim=0)
        bias = torch.cat([p.bias for p in projs], dim=0)
        return F.linear(x, weight, bias)  # (B, n, 3D)

    def forward(
        self,
        x: Tensor,
        vision_len: int,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | EntryLayout | None = None,
    ) -> Tensor:
        """(B, N, D) -> (B, N, D); ``padding_mask`` (B, N) True marks keys to ignore; ``attn_mask``
        (B or 1, N, N) bool, True where query i may attend to key j (see :func:`BEiT3.forward`), or an
        :class:`EntryLayout` (the per-name pattern, computed without an N x N mask)."""
        b, n, d = x.shape
        if vision_len >= n:
            qkv = self._qkv(x, "A")
        elif vision_len == 0:
            qkv = self._qkv(x, "B")
        else:
            qkv = torch.cat([self._qkv(x[:, :vision_len], "A"), self._qkv(x[:, vision_len:], "B")], dim=1)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (B,h,N,d)
        if isinstance(attn_mask, EntryLayout) and padding_mask is None:
            assert attn_mask.vision_len == vision_len, (attn_mask.vision_len, vision_len)
            out = entry_attention(q, k, v, attn_mask)  # (B, h, N, d)
        else:
            if isinstance(attn_mask, EntryLayout):
                attn_mask = attn_mask.dense()  # with padded text (no caller yet): correct, not fast
            # SDPA's boolean mask keeps where True: (B, 1, 1, N) broadcast over heads and queries.
            allowed = None if padding_mask is None else ~padding_mask[:, None, None, :]
            if attn_mask is not None:
                allowed = attn_mask[:, None] if allowed is None else allowed & attn_mask[:, None]  # (B,1,N,N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(out, vision_len), vision_len)


class MultiwayBlock(nn.Module):
    """Pre-LN transformer block whose norms, projections and FFN are vision/text expert pairs.

    Parameter names follow torchscale's ``EncoderLayer`` so official keys load unchanged below ``layers.i``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path_prob: float,
        eps: float,
        activation_checkpointing: bool,
    ) -> None:
        super().__init__()
        hidden = int(embed_dim * mlp_ratio)
        self.self_attn_layer_norm = multiway_norm(embed_dim, eps)
        self.self_attn = MultiwayAttention(embed_dim=embed_dim, num_heads=num_heads, eps=eps)
        self.final_layer_norm = multiway_norm(embed_dim, eps)
        self.ffn = Multiway(
            FeedForward(embed_dim=embed_dim, hidden_dim=hidden, eps=eps),
            FeedForward(embed_dim=embed_dim, hidden_dim=hidden, eps=eps),
        )
        self.drop_path_prob = drop_path_prob
        self.activation_checkpointing = activation_checkpointing

    def _forward(
        self, x: Tensor, vision_len: int, padding_mask: Tensor | None, attn_mask: Tensor | EntryLayout | None
    ) -> Tensor:
        h = self.self_attn(self.self_attn_layer_norm(x, vision_len), vision_len, padding_mask, attn_mask)
        x = x + drop_path(h, self.drop_path_prob, self.training)
        h = self.ffn(self.final_layer_norm(x, vision_len), vision_len)
        return x + drop_path(h, self.drop_path_prob, self.training)

    def forward(
        self,
        x: Tensor,
        *,
        vision_len: int,
        padding_mask: Tensor | None = None,
        attn_mask: Tensor | EntryLayout | None = None,
    ) -> Tensor:
        """(B, N, D) -> (B, N, D). Tokens ``[:vision_len]`` use the vision experts, the rest the text ones.

        Args:
            x: (B, N, D) token states, vision tokens first.
            vision_len: number of vision tokens (0 for text only, N for image only).
            padding_mask: (B, N) bool, True at padded tokens (they are never attended to), or None.
            attn_mask: (B or 1, N, N) bool, True where token i may attend to token j, an
                :class:`EntryLayout` of that pattern, or None (all).
        """
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # Recompute the block in backward: activations of the frozen trunk dominate training memory.
            return checkpoint(self._forward, x, vision_len, padding_mask, attn_mask, use_reentrant=False)
        return self._forward(x, vision_len, padding_mask, attn_mask)
