"""CPU forward time (and peak memory) of our BEiT-3 against torchscale 0.3.0's, same weights and inputs.

Input: a batch of 2 images at 224 px with 32 text tokens each (the second padded after 20), run jointly,
in inference mode. Each implementation is timed in alternation with the other (so background load hits
both alike); the median over the repeats is reported with the output difference. Peak memory is the
growth of the process's peak RSS over one forward (Linux ``VmHWM``), in a fresh subprocess per implementation.

Run: ``python -m benchmarks.beit3_speed --out outputs/bench`` (or ``run(out_dir)`` from a suite).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from omtseg.modeling.backbone.beit3 import BEiT3, load_beit3_checkpoint

REPO = Path(__file__).resolve().parents[1]
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=4),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
REPEATS = {"tiny": 30, "base": 5}
BATCH, IMG_SIZE, TEXT_LEN = 2, 224, 32


def _reference_module() -> Any:
    # The torchscale builder lives with the parity tests (it installs a stand-in for timm, test-only).
    path = REPO / "tests" / "modeling" / "_beit3_reference.py"
    spec = importlib.util.spec_from_file_location("_beit3_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE, generator=gen)
    ids = torch.randint(4, 64000, (BATCH, TEXT_LEN), generator=gen)
    pad = torch.zeros(BATCH, TEXT_LEN, dtype=torch.bool)
    pad[1, 20:] = True
    return image, ids, pad


def _models(preset: str) -> tuple[torch.nn.Module, BEiT3]:
    ref = _reference_module()
    theirs = ref.randomize_(ref.torchscale_beit3(img_size=IMG_SIZE, **PRESETS[preset])).eval()
    ours = BEiT3(img_size=IMG_SIZE, **PRESETS[preset]).eval()
    load_beit3_checkpoint(ours, {"model": {f"beit3.{k}": v for k, v in theirs.state_dict().items()}})
    return theirs, ours


def _call(impl: str, model: torch.nn.Module, image: torch.Tensor, ids: torch.Tensor, pad: torch.Tensor):
    if impl == "torchscale":
        return model(textual_tokens=ids, visual_tokens=image, text_padding_position=pad)["encoder_out"]
    return model(image=image, text_ids=ids, text_padding_mask=pad)


def time_preset(preset: str, repeats: int | None = None) -> dict[str, Any]:
    """Median forward seconds of both implementations on one preset, and their max abs difference."""
    repeats = REPEATS[preset] if repeats is None else repeats
    theirs, ours = _models(preset)
    image, ids, pad = _inputs()
    times: dict[str, list[float]] = {"torchscale": [], "ours": []}
    with torch.inference_mode():
        expected = _call("torchscale", theirs, image, ids, pad)
        diff = (_call("ours", ours, image, ids, pad) - expected).abs().max()  # also the warm-up
        for _ in range(1 if preset == "base" else 3):
            _call("torchscale", theirs, image, ids, pad)
            _call("ours", ours, image, ids, pad)
        for _ in range(repeats):
            for impl, model in (("torchscale", theirs), ("ours", ours)):
                start = time.perf_counter()
                _call(impl, model, image, ids, pad)
                times[impl].append(time.perf_counter() - start)
    ts, us = statistics.median(times["torchscale"]), statistics.median(times["ours"])
    return {
        "torchscale_s": ts,
        "ours_s": us,
        "ratio_ours_over_torchscale": us / ts,
        "max_abs_diff": float(diff),
        "repeats": repeats,
    }


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _peak_forward_mib(impl: str, preset: str) -> float:
    """Run in a fresh process: peak-RSS growth over one forward of ``impl``."""
    if impl == "torchscale":
        model = _reference_module().torchscale_beit3(img_size=IMG_SIZE, **PRESETS[preset]).eval()
    else:
        model = BEiT3(img_size=IMG_SIZE, **PRESETS[preset]).eval()
    image, ids, pad = _inputs()
    # Give freed heap pages back (else the forward reuses them unseen), then reset the peak RSS mark.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    with torch.inference_mode():
        _call(impl, model, image, ids, pad)
    return _status_mib("VmHWM") - before


def peak_memory(preset: str) -> dict[str, float]:
    """Forward peak-RSS growth in MiB per implementation, each in its own subprocess."""
    out = {}
    for impl in ("torchscale", "ours"):
        code = f"from benchmarks.beit3_speed import _peak_forward_mib as f; print(f({impl!r}, {preset!r}))"
        cmd = [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        out[f"{impl}_peak_mib"] = float(done.stdout.strip().splitlines()[-1])
    return out


def run(out_dir: str | Path, quick: bool = False) -> dict[str, Any]:
    """Time and measure both presets; write ``beit3_speed.json`` under ``out_dir`` and return the results.

    ``quick`` times 10 tiny and 2 base repeats instead of 30 and 5.
    """
    results: dict[str, Any] = {
        "input": f"{BATCH}x3x{IMG_SIZE}x{IMG_SIZE} + {BATCH}x{TEXT_LEN} text tokens, joint, inference mode",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for preset in PRESETS:
        repeats = {"tiny": 10, "base": 2}[preset] if quick else None
        results[preset] = {**time_preset(preset, repeats), **peak_memory(preset)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "beit3_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parsed = parser.parse_args(args)
    print(json.dumps(run(parsed.out, quick=parsed.quick), indent=2))


if __name__ == "__main__":
    main()
