"""Joint attention for the per-name prompt layouts without an N x N mask: cost linear in the text length.

In the ``per_name`` and ``one_way`` layouts (see :mod:`omtseg.modeling.prompts`) the text is a list of
*entries* (one class name each). A text token attends to the V vision tokens and to the tokens of its own
entry; vision tokens attend to the vision tokens and, with ``image_attends_text``, to every text token. As a
dense mask that is (V + L)^2 booleans and scores per head, almost all of them masked out for a large
vocabulary (ADE20K-847: L = 4710 text tokens next to V = 1601). :class:`EntryLayout` describes the same
pattern by its entries, and :func:`entry_attention` computes exactly what SDPA with :meth:`EntryLayout.dense`
computes, in O(V (V + L) + L n) scores:

- vision queries: plain SDPA against the vision keys (or all keys), no mask;
- text queries, in blocks of about n = 128 tokens of whole entries: SDPA against the vision keys and the
  block's own text keys, with a (n, V + n) mask that is block-diagonal on the text part (cached in the layout,
  built once per forward and shared by all layers: L (V + n) bytes, 8.7 MB for ADE20K-847 at 640 px).

On CPU that is 5x faster than gathering each entry's keys and doing the softmax by hand (measured, one thread,
ADE20K-847: 0.06 s vs 0.31 s per layer), since SDPA's fused kernel never writes the scores out.

On CUDA it runs ``torch.nn.attention.flex_attention`` (compiled once, lazily) with a block mask built from the
layout instead. That path is checked against the dense mask only in eager mode on CPU (forward only: eager
flex has no CPU backward in torch 2.13); its speed and its backward on a GPU are untimed and untested here.
Should it fail there (no triton, a compile error), :func:`entry_attention` warns once and takes the blocked
SDPA path for the rest of the process: same result, never a crash.

Shape letters: B batch, h heads, N tokens (V vision then L text), d head width, E entries.
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_TOKENS = 128
"""Most text queries per SDPA call: each block also scores its own n text keys (n / V extra work) and holds a
(n, V + n) mask; 128 was as fast as 256 and faster than 64 (ADE20K-847, one CPU thread)."""

SCORE_BYTES = 64 * 2**20
"""Bound on one block's scores (B, h, n, V + n), should SDPA materialise them (its math backend): a batch of
many heads gets blocks of fewer than ``BLOCK_TOKENS`` queries."""


def entry_mask(vision_len: int, entry: Tensor, *, image_attends_text: bool) -> Tensor:
    """(1, N, N) bool, N = ``vision_len`` + L, True where query i may attend to key j (the reference).

    Tensor ops only, so ONNX tracing keeps ``entry`` (L,) an input of the graph.
    """
    n = vision_len + entry.numel()
    allowed = torch.zeros(n, n, dtype=torch.bool, device=entry.device)
    allowed[:vision_len, :vision_len] = True
    allowed[vision_len:, :vision_len] = True
    allowed[vision_len:, vision_len:] = entry[:, None] == entry[None, :]
    if image_attends_text:
        allowed[:vision_len, vision_len:] = True
    return allowed[None]


@dataclass(frozen=True, eq=False)
class EntryLayout:
    """The per-name attention pattern of V vision tokens followed by L text tokens, by entries.

    Attributes:
        vision_len: V, vision tokens at the front of the sequence (0 for a text-only pass).
        entry: (L,) long label of each text token; tokens with equal labels form one entry (need not be
            contiguous, e.g. a sequential chunk's ``<s>`` and ``</s>`` both -1).
        image_attends_text: vision queries read every text token too (``per_name``), or vision only
            (``one_way``).
        group: (L,) long entry of each token, the labels relabelled 0..E-1 in increasing order.
        order: (L,) long text tokens sorted by entry (stable); ``inverse`` its inverse permutation.
        bounds: E + 1 offsets into ``order`` where each entry's tokens start, then L; Python ints, so
            planning blocks needs no device sync.
        contiguous: every entry is one run of tokens in entry order (``order`` is the identity).
    """

    vision_len: int
    entry: Tensor
    image_attends_text: bool
    group: Tensor = field(init=False, repr=False)
    order: Tensor = field(init=False, repr=False)
    inverse: Tensor = field(init=False, repr=False)
    bounds: tuple[int, ...] = field(init=False, repr=False)
    contiguous: bool = field(init=False, repr=False)
    _block_masks: dict[int, list[Tensor]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.entry.ndim != 1:
            raise ValueError(f"entry must be (L,) labels, got shape {tuple(self.entry.shape)}.")
        if self.vision_len < 0:
            raise ValueError(f"vision_len={self.vision_len} must be >= 0.")
        entry = self.entry.long()
        _, group = torch.unique(entry, return_inverse=True)  # (L,) 0..E-1
        order = torch.argsort(group, stable=True)
        arange = torch.arange(entry.numel(), device=entry.device)
        inverse = torch.empty_like(order)
        inverse[order] = arange
        bounds = (0, *torch.bincount(group).cumsum(0).tolist())
        contiguous = bool((order == arange).all())
        derived = dict(group=group, order=order, inverse=inverse, bounds=bounds, contiguous=contiguous)
        for name, value in dict(entry=entry, **derived).items():
            object.__setattr__(self, name, value)

    @property
    def num_entries(self) -> int:
        return len(self.bounds) - 1

    @property
    def size(self) -> int:
        """N = V + L tokens."""
        return self.vision_len + self.entry.numel()

    def dense(self) -> Tensor:
        """(1, N, N) bool mask of the same pattern, as SDPA takes it (True: may attend)."""
        return entry_mask(self.vision_len, self.entry, image_attends_text=self.image_attends_text)

    def text_only(self) -> EntryLayout:
        """The text block alone (V = 0): the layout of a text pass without the image."""
        return EntryLayout(0, self.entry, self.image_attends_text)

    def blocks(self, max_tokens: int) -> list[tuple[int, int]]:
        """Token ranges [t0, t1) of ``order`` holding whole entries, at most ``max_tokens`` tokens each (an
        entry longer than that alone), covering all L tokens in order."""
        out, e0 = [], 0
        while e0 < self.num_entries:
            e1 = max(e0 + 1, bisect_right(self.bounds, self.bounds[e0] + max_tokens) - 1)
            out.append((self.bounds[e0], self.bounds[e1]))
            e0 = e1
        return out

    def block_masks(self, max_tokens: int) -> list[Tensor]:
        """(n, V + n) bool per block of :meth:`blocks`: its queries' keys are the V vision tokens and its own
        n text tokens, of which those of the same entry. Cached: every layer of a forward reuses them."""
        masks = self._block_masks.get(max_tokens)
        if masks is None:
            group = self.group[self.order]  # (L,) entry order
            masks = []
            for t0, t1 in self.blocks(max_tokens):
                g = group[t0:t1]
                vision = torch.ones(t1 - t0, self.vision_len, dtype=torch.bool, device=g.device)
                masks.append(torch.cat([vision, g[:, None] == g[None, :]], dim=1))
            self._block_masks[max_tokens] = masks
        return masks

    def mask_mod(self) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """flex_attention's ``mask_mod(b, h, q, kv)`` of the pattern (True: may attend)."""
        v, image_attends_text = self.vision_len, self.image_attends_text
        # -1 on vision tokens: they share a label, but vision-vision pairs are allowed by kv < V anyway.
        labels = torch.cat([self.group.new_full((v,), -1), self.group])  # (N,)

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            allowed = (kv < v) | (labels[q] == labels[kv])
            return allowed | (q < v) if image_attends_text else allowed

        return mask_mod

    @cached_property
    def block_mask(self) -> Any:
        """flex_attention's BlockMask of the pattern, built once per layout (a forward's layers share it)."""
        from torch.nn.attention.flex_attention import create_block_mask

        n = self.size
        return create_block_mask(self.mask_mod(), None, None, n, n, device=self.entry.device)


def text_block(mask: Tensor | EntryLayout, vision_len: int) -> Tensor | EntryLayout:
    """The text-to-text part of a joint mask, for a text pass without the image."""
    if isinstance(mask, EntryLayout):
        return mask.text_only()
    return mask[:, vision_len:, vision_len:]


def entry_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: EntryLayout, *, block_tokens: int = BLOCK_TOKENS
) -> Tensor:
    """SDPA over (B, h, N, d) q, k, v restricted to ``layout`` -> (B, h, N, d), without an N x N mask.

    Equals ``F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense()[:, None])`` (same 1/sqrt(d)
    scale). CUDA tensors go through compiled flex_attention (:func:`flex_entry_attention`); others through
    :func:`blocked_entry_attention`.
    """
    if q.shape[-2] != layout.size:
        raise ValueError(f"{q.shape[-2]} tokens given for a layout of {layout.size} (V + L).")
    if _wants_flex(q) and _flex_failure is None:
        try:
            return flex_entry_attention(q, k, v, layout)
        except Exception as error:  # noqa: BLE001 - any compile/kernel failure: the exact SDPA path remains
            _give_up_flex(error)
    return blocked_entry_attention(q, k, v, layout, block_tokens=block_tokens)


_compiled_flex: Callable[..., Tensor] | None = None
_flex_failure: str | None = None
"""Why flex_attention failed in this process (then every call takes the blocked SDPA path), or None."""


def _wants_flex(q: Tensor) -> bool:
    """Whether ``q`` goes to flex_attention: CUDA tensors (flex's compiled kernels are Triton's)."""
    return q.is_cuda


def _give_up_flex(error: BaseException) -> None:
    """Stop using flex_attention in this process, saying once why (the blocked path gives the same result)."""
    global _flex_failure
    _flex_failure = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    warnings.warn(
        f"flex_attention failed ({_flex_failure}); per-name attention falls back to blocked SDPA "
        "(same result, slower on GPU). Check that triton is installed for this torch build.",
        RuntimeWarning,
        stacklevel=3,
    )


def flex_entry_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: EntryLayout, *, compiled: bool = True
) -> Tensor:
    """:func:`entry_attention` by ``flex_attention`` and ``layout.block_mask``.

    ``compiled=False`` runs flex_attention eagerly (it then materialises all N x N scores; on CPU forward
    only): the tests' parity check, not a fast path.
    """
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if not compiled:
        return flex_attention(q, k, v, block_mask=layout.block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex(q, k, v, block_mask=layout.block_mask)


def blocked_entry_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: EntryLayout, *, block_tokens: int = BLOCK_TOKENS
) -> Tensor:
    """:func:`entry_attention` by SDPA calls on blocks of text queries: any device and dtype, differentiable.

    ``block_tokens`` caps the text queries per call (lowered further by :data:`SCORE_BYTES`).
    """
    b, h, _, _ = q.shape
    nv = layout.vision_len
    out = []
    if nv:
        seen = slice(None) if layout.image_attends_text else slice(0, nv)
        out.append(F.scaled_dot_product_attention(q[:, :, :nv], k[:, :, seen], v[:, :, seen]))  # (B,h,V,d)
    qt, kt, vt = q[:, :, nv:], k[:, :, nv:], v[:, :, nv:]  # (B, h, L, d)
    if not layout.contiguous:
        qt, kt, vt = qt[:, :, layout.order], kt[:, :, layout.order], vt[:, :, layout.order]  # entry order
    k_img, v_img = k[:, :, :nv], v[:, :, :nv]
    per_token = b * h * q.element_size() * (nv + block_tokens)
    max_tokens = max(1, min(block_tokens, SCORE_BYTES // per_token))
    text = []
    for (t0, t1), mask in zip(layout.blocks(max_tokens), layout.block_masks(max_tokens), strict=True):
        keys = torch.cat([k_img, kt[:, :, t0:t1]], dim=2)  # (B, h, V + n, d)
        values = torch.cat([v_img, vt[:, :, t0:t1]], dim=2)
        text.append(F.scaled_dot_product_attention(qt[:, :, t0:t1], keys, values, attn_mask=mask))
    if text:
        states = torch.cat(text, dim=2)  # (B, h, L, d) in entry order
        out.append(states if layout.contiguous else states[:, :, layout.inverse])
    return torch.cat(out, dim=2)
