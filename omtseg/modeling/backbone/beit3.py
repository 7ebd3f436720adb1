"""BEiT-3: the multiway transformer encoder of the official release (microsoft/unilm ``beit3`` on torchscale).

Image patches and text tokens pass through one stack of pre-LN blocks. Attention is computed jointly
over ``[CLS, patches, text]``; every projection, LayerNorm and FFN has two experts, ``A`` for vision tokens
and ``B`` for text tokens. The vision/text split is the explicit ``vision_len`` argument of every call
(torchscale keeps it as mutable module state set before each forward; we never do). Sub-LN (a LayerNorm
inside attention before the output projection and inside the FFN after GELU), no relative position bias,
no embedding scale, learned absolute positions per modality with the fairseq offset of 2. The blocks are in
:mod:`omtseg.modeling.backbone.multiway`; this file holds the embeddings, the model, checkpoint loading and
the presets.

Shape letters: B batch, N tokens (vision then text), L text tokens, D width, H, W pixels.

Official checkpoints load with :func:`load_beit3_checkpoint` (renames in :func:`checkpoint_filter_fn`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omtseg.modeling.backbone.multiway import MultiwayBlock, multiway_norm

POSITION_OFFSET = 2
"""fairseq reserves the first two rows of every position table; position ``i`` reads row ``i + 2``."""


# --------------------------------------------------------------------------------------------- helpers


def resample_vision_positions(
    table: Tensor, grid: tuple[int, int], num_prefix: int = POSITION_OFFSET + 1
) -> Tensor:
    """Resize a vision position table to another patch grid.

    The ``num_prefix`` leading rows (2 fairseq rows + CLS) are kept; the rest, a square grid in row-major
    order, is resized bicubically (``align_corners=False``), as the official fine-tuning code does.

    Args:
        table: (num_prefix + g*g, D) position table of a square ``g x g`` grid.
        grid: target (gh, gw).

    Returns:
        (num_prefix + gh*gw, D) table, ``table`` itself when the grid already matches.
    """
    num_grid = table.shape[0] - num_prefix
    side = math.isqrt(num_grid)
    if side * side != num_grid:
        raise ValueError(
            f"Vision position table has {table.shape[0]} rows: {num_prefix} leading rows + {num_grid}, "
            "which is not a square patch grid. Is this a BEiT-3 `embed_positions.A.weight`?"
        )
    if (side, side) == tuple(grid):
        return table
    prefix, rest = table[:num_prefix], table[num_prefix:]
    rest = rest.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    rest = F.interpolate(rest.float(), size=grid, mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat([prefix, rest.flatten(2).squeeze(0).transpose(0, 1)], dim=0)  # (num_prefix + gh*gw, D)


# ------------------------------------------------------------------------------------------ embeddings


class VisionEmbedding(nn.Module):
    """Conv patch embedding with a CLS token prepended and a mask token for masked patches."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, image: Tensor, masked_position: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> (B, 1 + gh*gw, D); ``masked_position`` (B, gh*gw) bool swaps in the mask token."""
        x = self.proj(image).flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        if masked_position is not None:
            x = torch.where(masked_position[..., None], self.mask_token.to(x.dtype), x)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)


class PositionTables(nn.Module):
    """Learned absolute positions: ``A`` for CLS + patches, ``B`` for text (torchscale's embed_positions)."""

    def __init__(self, *, vision_rows: int, text_rows: int, embed_dim: int) -> None:
        super().__init__()
        self.A = nn.Embedding(vision_rows, embed_dim)
        self.B = nn.Embedding(text_rows, embed_dim)


# ----------------------------------------------------------------------------------------------- model


class BEiT3(nn.Module):
    """The BEiT-3 multiway encoder.

    Args:
        img_size: image side the vision position table is trained for; other sizes (multiples of
            ``patch_size``) use a bicubically resized table.
        patch_size: side of the square patches.
        in_chans: image channels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width / D.
        vocab_size: rows of the text embedding table (64010 in the official release: 64002 tokenizer ids
            plus 8 spare rows, so new tokens such as ``<WLS>`` need no resize).
        max_text_positions: rows of the text position table (fairseq offset included), so at most
            ``max_text_positions - 2`` text tokens.
        drop_path_rate: stochastic depth of the last block; linear from 0 over depth.
        layernorm_eps: epsilon of every LayerNorm.
        activation_checkpointing: recompute blocks in backward to save memory while training.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        vocab_size: int = 64010,
        max_text_positions: int = 1024,
        drop_path_rate: float = 0.0,
        layernorm_eps: float = 1e-5,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}.")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.max_text_positions = max_text_positions
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.text_embed = nn.Embedding(vocab_size, embed_dim)
        self.vision_embed = VisionEmbedding(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_vision_rows = POSITION_OFFSET + 1 + self.grid[0] * self.grid[1]
        self.embed_positions = PositionTables(
            vision_rows=num_vision_rows, text_rows=max_text_positions, embed_dim=embed_dim
        )
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # as torchscale: 0 at the first block
        self.blocks = nn.ModuleList(
            MultiwayBlock(
                embed_dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                drop_path_prob=rate,
                eps=layernorm_eps,
                activation_checkpointing=activation_checkpointing,
            )
            for rate in rates
        )
        self.final_norm = multiway_norm(embed_dim, layernorm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the official BEiT3Wrapper (normal(0.02) linears, unit LayerNorms) but without its truncation at
        # one std, which costs seconds on CPU for a base model; pretrained weights replace all of it anyway.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_embed.weight, std=self.embed_dim**-0.5)

    def patch_grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (gh, gw) of an image of size (H, W); both must be multiples of ``patch_size``."""
        h, w = image_hw
        if h % self.patch_size or w % self.patch_size or h <= 0 or w <= 0:
            raise ValueError(
                f"Image size {h}x{w} is not a positive multiple of the patch size {self.patch_size}; "
                "pad or resize images to a multiple of it."
            )
        return h // self.patch_size, w // self.patch_size

    def vision_positions(self, grid: tuple[int, int]) -> Tensor:
        """(1 + gh*gw, D) position embeddings of CLS and the patches of a (gh, gw) grid."""
        table = resample_vision_positions(self.embed_positions.A.weight, grid)
        return table[POSITION_OFFSET:]

    def embed(
        self,
        image: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        text_positions: Tensor | None = None,
        text_embeds: Tensor | None = None,
        vision_masked_position: Tensor | None = None,
    ) -> tuple[Tensor, int, Tensor | None]:
        """Token embeddings with positions added, ready for the blocks.

        Args:
            image: (B, C, H, W) normalised images, H and W multiples of ``patch_size``, or None.
            text_ids: (B, L) or (L,) long token ids, or None. A batch of 1 is shared by every image.
            text_padding_mask: (B, L) bool, True at padding, or None.
            text_positions: (B, L) or (L,) long positions before the fairseq offset (default ``0..L-1``).
            text_embeds: (B, L, D) precomputed token embeddings instead of ``text_ids`` (e.g. with learnable
                prompt vectors substituted), or None.
            vision_masked_position: (B, gh*gw) bool patches replaced by the mask token, or None.

        Returns:
            x: (B, N, D) with N = vision_len + L, padded text tokens zeroed.
            vision_len: 1 + gh*gw, or 0 without an image.
            padding_mask: (B, N) bool True at padding, or None when there is no text padding mask.
        """
        if text_ids is not None and text_embeds is not None:
            raise ValueError("Give either text_ids or text_embeds, not both.")
        if image is None and text_ids is None and text_embeds is None:
            raise ValueError("BEiT3 needs an image, text_ids or text_embeds.")
        parts: list[Tensor] = []
        if image is not None:
            if image.ndim != 4:
                raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}.")
            grid = self.patch_grid((image.shape[-2], image.shape[-1]))
            vision = self.vision_embed(image, vision_masked_position)
            parts.append(vision + self.vision_positions(grid).to(vision.dtype))
        vision_len = parts[0].shape[1] if parts else 0
        if text_ids is not None or text_embeds is not None:
            if text_ids is not None:
                text_embeds = self.text_embed(text_ids if text_ids.ndim == 2 else text_ids[None])
            assert text_embeds is not None
            if text_embeds.ndim == 2:
                text_embeds = text_embeds[None]
            length = text_embeds.shape[1]
            if text_positions is None:
                text_positions = torch.arange(length, device=text_embeds.device)
                low, high = 0, length - 1  # known without reading the tensor (no device sync)
            else:
                low, high = (int(text_positions.min()), int(text_positions.max())) if length else (0, 0)
            if low < 0 or high + POSITION_OFFSET >= self.max_text_positions:
                raise ValueError(
                    f"Text positions must lie in [0, {self.max_text_positions - POSITION_OFFSET}), got "
                    f"[{low}, {high}]; split the text into shorter chunks."
                )
            text_pos = self.embed_positions.B(text_positions + POSITION_OFFSET)  # (B or 1, L, D)
            text = text_embeds + text_pos.to(text_embeds.dtype)
            if parts and text.shape[0] != parts[0].shape[0]:
                if text.shape[0] != 1:
                    raise ValueError(f"{parts[0].shape[0]} images but {text.shape[0]} texts; give 1 or B.")
                text = text.expand(parts[0].shape[0], -1, -1)
            parts.append(text)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        padding_mask = None
        if text_padding_mask is not None:
            if text_padding_mask.ndim == 1:
                text_padding_mask = text_padding_mask[None]
            text_padding_mask = text_padding_mask.to(torch.bool).expand(x.shape[0], -1)
            if text_padding_mask.shape[1] != x.shape[1] - vision_len:
                raise ValueError(
                    f"text_padding_mask has {text_padding_mask.shape[1]} tokens, the text "
                    f"{x.shape[1] - vision_len}."
                )
            padding_mask = F.pad(text_padding_mask, (vision_len, 0), value=False)  # (B, N)
            x = x.masked_fill(padding_mask[..., None], 0.0)
        return x, vision_len, padding_mask

    def forward(
        self,
        image: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        text_positions: Tensor | None = None,
        text_embeds: Tensor | None = None,
        vision_masked_position: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Final token states (B, N, D): CLS, patches, then text; equals torchscale's ``encoder_out``.

        Arguments as in :meth:`embed`, and ``attn_mask`` (B or 1, N, N) bool, True where token i may attend
        to token j (None: every token attends to every non-padding token, as the official model does; a
        mask restricts that, e.g. each class name to itself and the image, see ``prompts.py``).
        """
        x, vision_len, padding_mask = self.embed(
            image, text_ids, text_padding_mask, text_positions, text_embeds, vision_masked_position
        )
        for block in self.blocks:
            x = block(x, vision_len=vision_len, padding_mask=padding_mask, attn_mask=attn_mask)
        return self.final_norm(x, vision_len)


# ----------------------------------------------------------------------------------- checkpoint filter

_RENAMES = (
    ("encoder.layers.", "blocks."),
    ("encoder.layer_norm.", "final_norm."),
    ("encoder.embed_positions.", "embed_positions."),
)
"""Official key prefix (after ``beit3.``) -> ours; below these prefixes names are torchscale's."""

_DROPPED = ("encoder.output_projection.",)
"""Pre-training language-model head inside the official encoder (absent when ``no_output_layer``)."""


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: BEiT3) -> dict[str, Tensor]:
    """Adapt an official BEiT-3 state dict to ``model``.

    Steps: unwrap ``{"model": ...}`` / ``{"module": ...}``; keep only keys under ``beit3.`` when there are any
    (the rest are task or pre-training heads: ``mlm_head``, ``mim_head``, ``language_head``, ``vision_head``,
    ``head``, ``pooler``, ``fc_norm`` ...) and strip that prefix; drop ``encoder.output_projection``; rename
    ``encoder.layers.`` -> ``blocks.``, ``encoder.layer_norm.`` -> ``final_norm.``,
    ``encoder.embed_positions.`` -> ``embed_positions.``; resample the vision position table to the model's
    ``img_size`` (bicubic over the grid, the 2 fairseq rows and CLS kept). Our own state dicts pass unchanged.
    """
    for key in ("model", "module"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    if any(k.startswith("beit3.") for k in state_dict):
        state_dict = {k[len("beit3.") :]: v for k, v in state_dict.items() if k.startswith("beit3.")}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_DROPPED):
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    table = out.get("embed_positions.A.weight")
    rows = model.embed_positions.A.weight.shape[0]
    if isinstance(table, Tensor) and table.ndim == 2 and table.shape[0] != rows:
        out["embed_positions.A.weight"] = resample_vision_positions(table, model.grid)
    return out


def official_state_dict(model: BEiT3, heads: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
    """``model``'s weights in the official unilm layout: ``{"model": {"beit3.<torchscale name>": ...}}``.

    The inverse of :func:`checkpoint_filter_fn` (``blocks.`` -> ``encoder.layers.``, ``final_norm.`` ->
    ``encoder.layer_norm.``, ``embed_positions.`` -> ``encoder.embed_positions.``), so a model pretrained
    here is saved as the release files are and loads through :func:`load_beit3_checkpoint` unchanged.

    Args:
        model: the encoder.
        heads: extra entries stored beside the encoder at the top level (pre-training heads such as
            ``mlm_head.weight``), as the official pre-training checkpoints keep theirs.
    """
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        for old, new in _RENAMES:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out["beit3." + key] = value.detach().clone()
    for key, value in (heads or {}).items():
        if key.startswith("beit3."):
            raise ValueError(f"Head entry {key!r} would shadow an encoder weight; name heads outside beit3.")
        out[key] = value.detach().clone()
    return {"model": out}


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_beit3_checkpoint(
    model: BEiT3, path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any]
) -> None:
    """Load official unilm BEiT-3 weights (or ours) into ``model`` strictly, via :func:`checkpoint_filter_fn`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a loadable checkpoint, or its keys/shapes do not match the model (the
            message lists the missing and unexpected keys and the shape mismatches, and names the source).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, state_dict = "the given state dict", path_or_state_dict
    else:
        path = Path(path_or_state_dict)
        source = f"checkpoint {path}"
        if not path.is_file():
            raise FileNotFoundError(
                f"BEiT-3 checkpoint not found: {path}. Download the official .pth and pass its path."
            )
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a bad file; report them the same way
            raise ValueError(f"Cannot read {source}: {e}. Is it a PyTorch .pth file?") from e
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{source} holds a {type(state_dict).__name__}, not a state dict.")
    filtered = checkpoint_filter_fn(state_dict, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(filtered))
    unexpected = sorted(set(filtered) - set(expected))
    mismatched = [
        f"{k} {tuple(filtered[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in filtered and tuple(filtered[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"missing keys [{_listing(missing)}]" if missing else "",
            f"unexpected keys [{_listing(unexpected)}]" if unexpected else "",
            f"shape mismatches [{_listing(mismatched)}]" if mismatched else "",
        ]
        raise ValueError(
            f"{source} does not fit this BEiT3 ({'; '.join(p for p in problems if p)}). Check that the "
            "preset (base/large, patch size, vocab size) matches the checkpoint."
        )
    model.load_state_dict(filtered, strict=True)


# ------------------------------------------------------------------------------------------- factories


def beit3_tiny(**kwargs: Any) -> BEiT3:
    """A 4-block, 64-wide BEiT-3 for tests and demos (vocabulary and position tables as the real ones)."""
    return BEiT3(**{"embed_dim": 64, "depth": 4, "num_heads": 4, **kwargs})


def beit3_base(**kwargs: Any) -> BEiT3:
    """BEiT-3 base: 12 blocks, width 768, 12 heads (about 222M parameters with both experts)."""
    return BEiT3(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


def beit3_large(**kwargs: Any) -> BEiT3:
    """BEiT-3 large: 24 blocks, width 1024, 16 heads."""
    return BEiT3(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})
