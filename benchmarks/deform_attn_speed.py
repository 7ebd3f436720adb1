"""Speed and memory of our deformable-attention core against a straightforward per-level reference.

The reference is the textbook pure-PyTorch formulation (Deformable DETR's): sample every level with
``grid_sample``, stack all levels' reads (B*M, Dh, Nq, L, P), multiply by the weights and sum. Ours
(:func:`omtseg.modeling.ops.ms_deform_attn.ms_deform_attn_core`) accumulates level by level instead, so only
one level's reads are alive at a time. Both compute the same numbers; the result records their largest
difference.

Measured per case: forward time, forward+backward time, bytes autograd saves for backward (hooked, so exact on
any device), and the peak memory allocated by the forward (no grad) and by forward+backward (CUDA allocator
statistics, or on CPU the profiler's allocation events).

Run: ``python -m benchmarks.deform_attn_speed --out outputs/bench`` (writes ``deform_attn_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from omtseg.modeling.ops.ms_deform_attn import ms_deform_attn_core

# (name, batch, level shapes, queries, heads, channels per head, points). Image sizes give the shapes:
# the pixel decoder's encoder at 512x512 (strides 8/16/32, queries = all tokens) and the adapter's injector at
# 1024x1024 (patch queries at stride 16 reading strides 8/16/32), BEiT-3 large widths.
CASES: list[tuple[str, int, list[tuple[int, int]], int | None, int, int, int]] = [
    ("pixel_decoder_512px", 2, [(64, 64), (32, 32), (16, 16)], None, 8, 32, 4),
    ("adapter_injector_1024px", 1, [(128, 128), (64, 64), (32, 32)], 64 * 64, 16, 32, 4),
]


def reference_core(value: Tensor, spatial_shapes: Tensor, locations: Tensor, weights: Tensor) -> Tensor:
    """Per-level ``grid_sample``, all levels stacked, then weighted and summed. Same contract as ours."""
    b, _, m, dh = value.shape
    _, nq, _, n_levels, n_points, _ = locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    grids = 2 * locations - 1
    reads = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        v = value.split(sizes, dim=1)[lvl].flatten(2).transpose(1, 2).reshape(b * m, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Nq, P, 2)
        reads.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(reads, dim=-2).flatten(-2)  # (B*M, Dh, Nq, L*P)
    w = weights.transpose(1, 2).reshape(b * m, 1, nq, n_levels * n_points)
    return (stacked * w).sum(-1).view(b, m * dh, nq).transpose(1, 2)


def _inputs(case: tuple, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _, b, shapes, nq, m, dh, n_points = case
    g = torch.Generator(device="cpu").manual_seed(0)
    nv = sum(h * w for h, w in shapes)
    nq = nv if nq is None else nq
    value = torch.randn(b, nv, m, dh, generator=g)
    locations = torch.rand(b, nq, m, len(shapes), n_points, 2, generator=g)
    weights = torch.rand(b, nq, m, len(shapes), n_points, generator=g).softmax(-1)
    spatial = torch.tensor(shapes, dtype=torch.long)
    return value.to(device), spatial.to(device), locations.to(device), weights.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats * 1000.0


def _saved_bytes(fn: Callable[..., Tensor], args: tuple[Tensor, ...]) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total


def _peak_bytes(step: Callable[[], Any], device: torch.device) -> int:
    """Peak memory allocated by ``step`` above what was allocated before it."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    # CPU has no allocator statistics: replay the profiler's allocation (op self memory) and free
    # ("[memory]") events in time order and take the running maximum.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    deltas = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
    )
    running = peak = 0
    for _, delta in deltas:
        running += delta
        peak = max(peak, running)
    return peak


def _measure(
    fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], device: torch.device, repeats: int
) -> dict:
    value, spatial, locations, weights = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    args = (leaves[0], spatial, leaves[1], leaves[2])

    def forward() -> None:
        with torch.no_grad():
            fn(value, spatial, locations, weights)

    def train_step() -> None:
        fn(*args).sum().backward()
        for t in leaves:
            t.grad = None

    return {
        "forward_ms": _time(forward, device, repeats),
        "forward_backward_ms": _time(train_step, device, repeats),
        "saved_for_backward_mib": _saved_bytes(fn, args) / 2**20,
        "peak_forward_mib": _mib(_peak_bytes(forward, device)),
        "peak_forward_backward_mib": _mib(_peak_bytes(train_step, device)),
    }


def _mib(n: int) -> float:
    return n / 2**20


def run(out_dir: str | Path, *, repeats: int = 5, device: str | None = None) -> dict:
    """Benchmark every case; write ``deform_attn_speed.json`` into ``out_dir`` and return the same dict.

    Args:
        out_dir: folder for the JSON result (created).
        repeats: timed repetitions after one warm-up.
        device: "cpu" or "cuda"; None takes CUDA when available.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    result["torch"] = torch.__version__
    for case in CASES:
        inputs = _inputs(case, dev)
        with torch.no_grad():
            diff = (ms_deform_attn_core(*inputs) - reference_core(*inputs)).abs().max().item()
        result[case[0]] = {
            "shape": {
                "batch": case[1],
                "levels": case[2],
                "queries": int(inputs[2].shape[1]),
                "heads": case[4],
                "head_dim": case[5],
                "points": case[6],
            },
            "max_abs_diff": diff,
            "ours": _measure(ms_deform_attn_core, inputs, dev, repeats),
            "reference": _measure(reference_core, inputs, dev, repeats),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deform_attn_speed.json").write_text(json.dumps(result, indent=2))
    return result


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench", help="folder for deform_attn_speed.json")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ns = parser.parse_args(args)
    print(json.dumps(run(ns.out, repeats=ns.repeats, device=ns.device), indent=2))


if __name__ == "__main__":
    main()
