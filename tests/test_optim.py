"""Parameter groups (one group per trainable parameter, the no-decay rule) and the warm-up/decay schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from lion_pytorch import Lion
from torch import nn

from omtseg.optim import WarmupDecay, WarmupDecayLR, apply_lr_scale, param_groups


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.text = nn.Embedding(10, 8)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.wls = nn.Parameter(torch.zeros(8))
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 3))
        self.query_feat = nn.Embedding(4, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.frozen = nn.Linear(8, 8).requires_grad_(False)


def _names(model: nn.Module, group: dict) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in group["params"]}


def test_every_trainable_parameter_in_exactly_one_group() -> None:
    model = _Toy()
    model.backbone.blocks.requires_grad_(False)
    groups = param_groups(model, lr_multipliers={"backbone": 0.1, "wls": 0.1})
    placed = [n for g in groups for n in _names(model, g)]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)
    assert not any(n.startswith("frozen") or n.startswith("backbone.blocks") for n in placed)


def test_no_decay_rule_and_multipliers() -> None:
    model = _Toy()
    groups = {g["name"]: g for g in param_groups(model, lr_multipliers={"backbone": 0.1, "wls": 0.2})}
    assert set(groups) == {
        "base/decay", "base/no_decay", "backbone/decay", "backbone/no_decay", "wls/no_decay"
    }
    assert _names(model, groups["base/decay"]) == {"head.0.weight", "head.2.weight"}
    assert _names(model, groups["base/no_decay"]) == {
        "head.0.bias", "head.1.weight", "head.1.bias", "head.2.bias", "query_feat.weight", "logit_scale",
    }
    assert _names(model, groups["backbone/decay"]) == {"backbone.blocks.weight"}
    assert _names(model, groups["backbone/no_decay"]) == {
        "backbone.pos_embed", "backbone.blocks.bias", "backbone.norm.weight", "backbone.norm.bias",
        "backbone.text.weight",
    }
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("no_decay"))
    assert all("weight_decay" not in g for n, g in groups.items() if n.endswith("/decay"))
    assert groups["backbone/decay"]["lr_scale"] == 0.1 and groups["wls/no_decay"]["lr_scale"] == 0.2
    assert groups["base/decay"]["lr_scale"] == 1.0


def test_longest_prefix_wins_and_prefix_matches_whole_components() -> None:
    model = _Toy()
    groups = param_groups(model, lr_multipliers={"backbone": 0.1, "backbone.norm": 0.5, "back": 9.0})
    scales = {n: g["lr_scale"] for g in groups for n in _names(model, g)}
    assert scales["backbone.norm.weight"] == 0.5
    assert scales["backbone.blocks.weight"] == 0.1
    assert scales["head.0.weight"] == 1.0


def test_lion_gets_scaled_lr_and_decay_per_group() -> None:
    model = _Toy()
    opt = Lion(param_groups(model, lr_multipliers={"backbone": 0.1}), lr=1e-3, weight_decay=0.15)
    apply_lr_scale(opt)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["backbone/decay"]["lr"] == pytest.approx(1e-4)
    assert by_name["base/decay"]["lr"] == pytest.approx(1e-3)
    assert by_name["base/decay"]["weight_decay"] == 0.15
    assert by_name["base/no_decay"]["weight_decay"] == 0.0
    model.head[2](torch.randn(2, 8)).sum().backward()
    before = model.head[2].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.head[2].weight)


def test_negative_multiplier_is_rejected() -> None:
    with pytest.raises(ValueError, match="backbone"):
        param_groups(_Toy(), lr_multipliers={"backbone": -1.0})


def test_warmup_then_poly_decay() -> None:
    f = WarmupDecay(max_steps=100, warmup_steps=10, warmup_factor=0.01, decay="poly", power=1.0)
    assert f(0) == pytest.approx(0.01)
    assert f(5) == pytest.approx((0.01 * 0.5 + 0.5) * 0.95)
    assert f(10) == pytest.approx(0.9)
    assert f(100) == 0.0 and f(150) == 0.0
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_warmup_then_cosine_decay() -> None:
    # Hugging Face's cosine with warm-up (SCA): 0 -> 1 over the warm-up, then a half cosine over the rest.
    f = WarmupDecay(max_steps=100, warmup_steps=10, warmup_factor=0.0, decay="cosine")
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(40) == pytest.approx((1 + math.cos(math.pi / 3)) / 2)
    assert f(100) == pytest.approx(0.0) and f(150) == pytest.approx(0.0)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_step_and_constant_decay() -> None:
    f = WarmupDecay(max_steps=100, decay="step", milestones=(30, 60), gamma=0.1)
    assert [f(0), f(29), f(30), f(59), f(60), f(99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert WarmupDecay(max_steps=5, decay="constant")(4) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_steps": 0},
        {"max_steps": 10, "warmup_steps": 11},
        {"max_steps": 10, "decay": "linear"},
        {"max_steps": 10, "milestones": (5, 2)},
    ],
)
def test_bad_schedule_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WarmupDecay(**kwargs)


def test_scheduler_steps_per_call_and_round_trips_with_weights_only() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = WarmupDecayLR(opt, max_steps=10, warmup_steps=4, warmup_factor=0.0, power=1.0)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25 * 0.9, 0.5 * 0.8, 0.75 * 0.7, 0.6, 0.5])
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched2 = WarmupDecayLR(opt2, max_steps=10, warmup_steps=4, warmup_factor=0.0, power=1.0)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.last_epoch == 6
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.3)
