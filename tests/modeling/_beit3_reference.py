"""The independent BEiT-3 reference for parity tests and benchmarks: torchscale 0.3.0's ``BEiT3``.

torchscale imports ``timm.models.layers.drop_path``; timm is not a dependency (nothing may import it), so a
minimal stand-in module is placed in ``sys.modules`` only while torchscale is imported, then removed.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn


def _timm_standin() -> dict[str, types.ModuleType]:
    def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
        if drop_prob == 0.0 or not training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - drop_prob)
        return x * keep / (1 - drop_prob)

    timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
    layers.drop_path = drop_path  # type: ignore[attr-defined]
    models.layers = layers  # type: ignore[attr-defined]
    timm.models = models  # type: ignore[attr-defined]
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers}


def torchscale_beit3(
    *,
    img_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    patch_size: int = 16,
    mlp_ratio: float = 4.0,
    vocab_size: int = 64010,
) -> nn.Module:
    """torchscale's BEiT3 built with the official unilm flags (``_get_base_config``), at the given size."""
    stand_in = _timm_standin()
    saved = {name: sys.modules.get(name) for name in stand_in}
    sys.modules.update(stand_in)
    try:
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3 as TorchscaleBEiT3
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    config = EncoderConfig(
        img_size=img_size,
        patch_size=patch_size,
        vocab_size=vocab_size,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0.0,
        encoder_embed_dim=embed_dim,
        encoder_attention_heads=num_heads,
        encoder_ffn_embed_dim=int(embed_dim * mlp_ratio),
        encoder_layers=depth,
    )
    return TorchscaleBEiT3(config)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (LayerNorm gains and biases included), so no weight hides a bug."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name or "_ln" in name:
            p.copy_((1.0 + 0.3 * noise) if name.endswith("weight") else 0.3 * noise)
        else:
            p.copy_(noise * (0.5 / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1 else 0.1))
    return model


def save_official(model: nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save as the unilm release does: ``{"model": {"beit3." + key: tensor, ...heads}}``."""
    state = {f"beit3.{k}": v for k, v in model.state_dict().items()}
    state.update(extra or {})
    torch.save({"model": state}, path)
    return path
