"""Optimizer parameter groups and the warm-up + decay learning-rate schedule (pure, Lightning-free).

Parameter groups follow two rules:

- learning rate: parameters under a configured module prefix (e.g. the trainable parts of the frozen
  backbone: position tables, the ``<WLS>`` vector) train at ``lr * multiplier``; everything else at ``lr``;
- weight decay: norms, biases, embeddings, decoder queries, position tables and the logit scale are not
  decayed (shrinking them toward zero changes what they mean rather than regularising).

Every trainable parameter lands in exactly one group, which :func:`param_groups` asserts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.Embedding,
)
"""Module types whose parameters are never decayed."""

NO_DECAY_NAMES: tuple[str, ...] = ("pos_embed", "position", "query", "level_embed", "logit_scale", "wls")
"""Parameter-name fragments that are never decayed (position tables, queries, learned scales, <WLS>)."""


def _owner_prefix(name: str, prefixes: Sequence[str]) -> str | None:
    # Longest matching prefix wins so "a.b" can override "a"; a prefix matches whole path components only.
    best: str | None = None
    for prefix in prefixes:
        stem = prefix.rstrip(".")
        if (name == stem or name.startswith(stem + ".")) and (best is None or len(stem) > len(best)):
            best = stem
    return best


def _no_decay(name: str, param: nn.Parameter, module: nn.Module, no_decay_names: Sequence[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if param.ndim <= 1 or leaf == "bias" or isinstance(module, NO_DECAY_MODULES):
        return True
    return any(fragment in name for fragment in no_decay_names)


def param_groups(
    model: nn.Module,
    *,
    lr_multipliers: Mapping[str, float] | None = None,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into optimizer groups.

    Args:
        model: any module; parameters with ``requires_grad=False`` are left out.
        lr_multipliers: module prefix -> learning-rate multiplier (``{"backbone.backbone": 0.2}``);
            parameters under no prefix get 1.0.
        no_decay_names: name fragments that switch weight decay off (besides norms, embeddings,
            biases and every parameter with at most one dimension).

    Returns:
        Groups ``{"name", "params", "lr_scale"}`` plus ``"weight_decay": 0.0`` on the no-decay ones;
        decayed groups carry no ``weight_decay`` so the optimizer's own value applies. Apply the
        multipliers with :func:`apply_lr_scale` once the optimizer exists. Empty groups are dropped.
    """
    lr_multipliers = dict(lr_multipliers or {})
    for prefix, scale in lr_multipliers.items():
        if not scale >= 0.0:
            raise ValueError(f"Learning-rate multiplier for {prefix!r} is {scale}; use a value >= 0.")
    owners = {name: module for name, module in model.named_modules()}
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    trainable = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trainable += 1
        owner = _owner_prefix(name, list(lr_multipliers))
        module = owners[name.rsplit(".", 1)[0]] if "." in name else model
        no_decay = _no_decay(name, param, module, no_decay_names)
        key = (owner or "base", no_decay)
        if key not in groups:
            group: dict[str, Any] = {
                "name": f"{key[0]}/{'no_decay' if no_decay else 'decay'}",
                "params": [],
                "lr_scale": lr_multipliers[owner] if owner is not None else 1.0,
            }
            if no_decay:
                group["weight_decay"] = 0.0
            groups[key] = group
        groups[key]["params"].append(param)
    out = list(groups.values())
    placed = [id(p) for g in out for p in g["params"]]
    assert len(placed) == len(set(placed)) == trainable, "a trainable parameter is in no group or in two"
    return out


def apply_lr_scale(optimizer: Optimizer) -> None:
    """Multiply each group's learning rate by its ``lr_scale`` (call once, before building a scheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


@dataclass(frozen=True)
class WarmupDecay:
    """Learning-rate factor at an optimizer step: linear warm-up, then poly, step or constant decay.

    Attributes:
        max_steps: total optimizer steps of the run; poly decay reaches 0 there.
        warmup_steps: steps of linear warm-up from ``warmup_factor`` to 1.
        warmup_factor: factor at step 0 (a small value avoids a cold start at lr 0).
        decay: "poly" (``(1 - t / max_steps) ** power``, over the warm-up too, as detectron2), "cosine"
            (``(1 + cos(pi u)) / 2`` with ``u`` the share of the steps after the warm-up, as Hugging Face's
            cosine schedule that SCA's captioner uses), "step" (times ``gamma`` at each milestone) or
            "constant".
        power: poly exponent (0.9 as in Mask2Former).
        milestones: steps at which "step" decay multiplies by ``gamma``.
        gamma: step-decay factor.
    """

    max_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 1e-3
    decay: Literal["poly", "cosine", "step", "constant"] = "poly"
    power: float = 0.9
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}; the schedule needs the run's step count (>= 1).")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must lie in [0, max_steps={self.max_steps}]; lower the "
                "scheduler's warmup_steps or raise trainer.max_steps."
            )
        if self.decay not in ("poly", "cosine", "step", "constant"):
            raise ValueError(f"decay={self.decay!r}; choose 'poly', 'cosine', 'step' or 'constant'.")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones={self.milestones} must be increasing.")

    def __call__(self, step: int) -> float:
        if self.decay == "poly":
            factor = (1.0 - min(step, self.max_steps) / self.max_steps) ** self.power
        elif self.decay == "cosine":
            after = min(max(step - self.warmup_steps, 0), self.max_steps - self.warmup_steps)
            factor = 0.5 * (1.0 + math.cos(math.pi * after / max(self.max_steps - self.warmup_steps, 1)))
        elif self.decay == "step":
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            factor = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return factor


class WarmupDecayLR(LambdaLR):
    """:class:`LambdaLR` driven by :class:`WarmupDecay`; step it once per optimizer step.

    Typed keyword arguments make it a LightningCLI ``LRSchedulerCallable`` (``class_path:
    omtseg.optim.WarmupDecayLR``); its state (the schedule's fields and the step) round-trips through
    checkpoints as plain numbers.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        max_steps: int,
        warmup_steps: int = 0,
        warmup_factor: float = 1e-3,
        decay: Literal["poly", "cosine", "step", "constant"] = "poly",
        power: float = 0.9,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
    ) -> None:
        schedule = WarmupDecay(
            max_steps=max_steps,
            warmup_steps=warmup_steps,
            warmup_factor=warmup_factor,
            decay=decay,
            power=power,
            milestones=tuple(milestones),
            gamma=gamma,
        )
        super().__init__(optimizer, lr_lambda=schedule)

