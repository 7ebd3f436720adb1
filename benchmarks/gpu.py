"""GPU throughput of the paper-size model: BEiT-3 large at 640 px, bf16 autocast, on one CUDA device.

Measured (random weights: speed does not depend on them, so no checkpoint is needed):

- training images/s: frozen BEiT-3 + adapter + head, Lion, the 133 COCO classes as the vocabulary, synthetic
  targets; the batch is the largest of 16, 8, 4, 2, 1 that fits; peak memory (``max_memory_allocated``);
- inference images/s: ``OMTSeg.predict`` (panoptic) with the 133-class COCO vocabulary, and the forward alone;
- model FLOP utilisation (MFU): FLOPs of matmuls, convolutions and attention counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one step, divided by the step time and by the device's
  bf16 matmul rate measured in the same run (a large ``mm``). Reported for the whole step and for the BEiT-3
  trunk alone (one joint image+text pass through the blocks; training = forward + the activation backward
  the adapter needs, the trunk's weights being frozen);
- variants of the inference forward, each against the baseline in the same run: channels-last memory format,
  unfused SDPA (the math backend, to show what the fused kernels win), and ``torch.compile`` of the BEiT-3
  blocks. Winners are listed; a variant that errors is reported with its error.

Without CUDA it returns ``{"skipped": "no CUDA device: skipped"}``. ``device="cpu"`` with a small preset runs
every code path on CPU (a smoke test, not a measurement).

Run: ``python -m benchmarks.gpu --out outputs/bench/gpu [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lion_pytorch import Lion
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from omtseg.data.vocabulary import read_categories_json
from omtseg.io import save_json
from omtseg.modeling.criterion import SetCriterion
from omtseg.modeling.matcher import HungarianMatcher
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, Targets, Vocabulary

REPO = Path(__file__).resolve().parents[1]
COCO_CATEGORIES = REPO / "tests" / "fixtures" / "coco_panoptic_sample" / "panoptic_coco_categories.json"
BATCH_SIZES = (16, 8, 4, 2, 1)
VARIANTS = ("channels_last", "sdpa_math", "compile_blocks")
SEGMENTS_PER_IMAGE = 12


def coco_vocabulary() -> Vocabulary:
    """The 133 COCO panoptic classes with their prompt synonyms."""
    return read_categories_json(COCO_CATEGORIES)


def synthetic_targets(batch: int, size: int, vocabulary: Vocabulary, device: torch.device) -> list[Targets]:
    """Per image, ``SEGMENTS_PER_IMAGE`` non-overlapping blocky Voronoi segments with random classes."""
    g = torch.Generator().manual_seed(0)
    cells = size // 16
    out = []
    for _ in range(batch):
        centres = torch.rand(SEGMENTS_PER_IMAGE, 2, generator=g) * cells
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        grid = torch.stack([ys, xs], -1).float().view(-1, 1, 2)
        owner = (grid - centres).pow(2).sum(-1).argmin(-1).view(cells, cells)
        owner = owner.repeat_interleave(16, 0).repeat_interleave(16, 1)  # (H, W)
        present = owner.unique()
        labels = torch.randint(0, len(vocabulary), (len(present),), generator=g)
        is_thing = torch.tensor([vocabulary.is_thing[k] for k in labels.tolist()])
        out.append(
            Targets(
                labels=labels,
                masks=owner[None] == present[:, None, None],
                is_thing=is_thing,
                crowd_labels=torch.zeros(0, dtype=torch.long),
                crowd_masks=torch.zeros(0, size, size, dtype=torch.bool),
                void=torch.zeros(size, size, dtype=torch.bool),
                segment_ids=present + 1,
            ).to(device)
        )
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls, synchronised."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def matmul_flops_per_s(device: torch.device, size: int, repeats: int) -> float:
    """The device's achieved bf16 matmul rate (FLOP/s) on a (size x size) @ (size x size) product."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: torch.mm(a, b), device, repeats, warmup=3)
    return 2.0 * size**3 / seconds


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls, convolutions and attention kernels run by one call of ``fn``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _images(batch: int, size: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8).to(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _train_fns(
    model: OMTSeg, criterion: SetCriterion, optimizer: torch.optim.Optimizer, vocabulary: Vocabulary,
    images: Tensor, targets: list[Targets],
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward + backward, full step with the optimizer) on one fixed batch."""
    num_masks = float(sum(len(t.labels) for t in targets))

    def forward_backward() -> None:
        with _autocast(images.device):
            losses = criterion(model(images, vocabulary), targets, num_masks)
        losses["loss"].backward()

    def step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return forward_backward, step


def measure_training(
    model: OMTSeg, vocabulary: Vocabulary, size: int, device: torch.device, *, max_batch: int, repeats: int,
    peak_flops: float,
) -> dict[str, Any]:
    """Images/s, peak memory and MFU of full training steps at the largest batch that fits."""
    criterion = SetCriterion(matcher=HungarianMatcher())
    params = [p for group in model.trainable_parameters().values() for p in group]
    optimizer = Lion(params, lr=1e-4, weight_decay=0.05)
    model.train()
    tried: dict[str, str] = {}
    for batch in [b for b in BATCH_SIZES if b <= max_batch]:
        images, targets = _images(batch, size, device), synthetic_targets(batch, size, vocabulary, device)
        forward_backward, step = _train_fns(model, criterion, optimizer, vocabulary, images, targets)
        try:
            step()
        except torch.OutOfMemoryError as e:
            tried[str(batch)] = f"out of memory: {str(e).splitlines()[0]}"
            optimizer.zero_grad(set_to_none=True)
            del images, targets, forward_backward, step
            _free(device)
            continue
        _reset_peak(device)
        seconds = median_seconds(step, device, repeats)
        peak = _peak_mib(device)
        flops = count_flops(forward_backward)
        optimizer.zero_grad(set_to_none=True)
        return {
            "batch_size": batch,
            "batch_sizes_that_did_not_fit": tried,
            "step_s": seconds,
            "images_per_s": batch / seconds,
            "peak_memory_mib": peak,
            "flops_per_step": flops,
            "mfu": flops / seconds / peak_flops,
            "trainable_parameters": sum(p.numel() for p in params),
        }
    raise RuntimeError(f"No training batch size fits on {device}: {tried}")


def measure_inference(
    model: OMTSeg, vocabulary: Vocabulary, size: int, device: torch.device, *, batch: int, repeats: int,
    peak_flops: float,
) -> dict[str, Any]:
    """Images/s of ``predict`` (panoptic, post-processing included) and of the forward alone."""
    model.eval()
    images = _images(batch, size, device)
    infos = [ImageInfo(image_id=i, file_name=f"{i}.jpg", orig_size=(size, size), resized_size=(size, size))
             for i in range(batch)]
    padding = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
    data = Batch(images=images, padding_mask=padding, targets=None, infos=infos, vocabulary=vocabulary)

    def predict() -> None:
        with torch.no_grad(), _autocast(device):
            model.predict(data, tasks=("panoptic",))

    def forward() -> None:
        with torch.no_grad(), _autocast(device):
            model(images, vocabulary)

    def counted_forward() -> None:
        # One image with autograd on: FlopCounterMode's module tracker cannot follow parameters fed to
        # modules under no_grad, and FLOPs grow linearly with the batch.
        with _autocast(device):
            model(images[:1], vocabulary)

    _reset_peak(device)
    predict_s = median_seconds(predict, device, repeats)
    forward_s = median_seconds(forward, device, repeats)
    flops = batch * count_flops(counted_forward)
    return {
        "batch_size": batch,
        "images_per_s": batch / predict_s,
        "forward_images_per_s": batch / forward_s,
        "postprocess_share": max(predict_s - forward_s, 0.0) / predict_s,
        "peak_memory_mib": _peak_mib(device),
        "flops_per_forward": flops,
        "mfu": flops / forward_s / peak_flops,
    }


def measure_backbone(
    model: OMTSeg, vocabulary: Vocabulary, size: int, device: torch.device, *, batch: int, repeats: int,
    peak_flops: float,
) -> dict[str, Any]:
    """MFU of the BEiT-3 trunk alone: one joint pass (image + the first prompt chunk) through its blocks."""
    trunk = model.backbone
    chunk = model.prompts.tokenize(vocabulary)[0].to(device)
    images = model.preprocess(_images(batch, size, device))
    out: dict[str, Any] = {"batch_size": batch, "text_tokens": int(chunk.text_ids.numel())}
    for mode in ("inference", "train"):
        train = mode == "train"

        def blocks(train: bool = train) -> None:
            with torch.set_grad_enabled(train), _autocast(device):
                text = model.prompts.embed_text(trunk.text_embed, chunk.text_ids)[None]
                x, vision_len, padding = trunk.embed(image=images, text_embeds=text,
                                                     text_positions=chunk.text_positions)
                # The adapter's injected features reach the blocks' input, so training back-propagates
                # through every block to it, though the blocks' own weights are frozen.
                x = x.detach().requires_grad_(train)
                for block in trunk.blocks:
                    x = block(x, vision_len=vision_len, padding_mask=padding)
            if train:
                x.float().sum().backward()

        seconds = median_seconds(blocks, device, repeats)
        flops = count_flops(blocks)
        out[mode] = {"seconds": seconds, "flops": flops, "mfu": flops / seconds / peak_flops}
    return out


def _variant(model: OMTSeg, name: str) -> Callable[[], AbstractContextManager[Any]]:
    """Applies a variant to ``model`` (permanently for compile) and returns the context to run it in."""
    if name == "channels_last":
        model.to(memory_format=torch.channels_last)
        return nullcontext
    if name == "sdpa_math":
        return lambda: sdpa_kernel([SDPBackend.MATH])
    if name == "compile_blocks":
        for block in model.backbone.blocks:
            block.compile()
        return nullcontext
    raise ValueError(f"Unknown variant {name!r}; choose from {VARIANTS}.")


def compare_variants(
    model: OMTSeg, vocabulary: Vocabulary, size: int, device: torch.device, *, batch: int, repeats: int,
    variants: Sequence[str],
) -> dict[str, Any]:
    """Forward images/s of each variant against the baseline measured just before it."""
    model.eval()
    images = _images(batch, size, device)

    def forward(context: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        with torch.no_grad(), _autocast(device), context():
            model(images, vocabulary)

    out: dict[str, Any] = {}
    for name in variants:
        base = median_seconds(forward, device, repeats)
        try:
            context = _variant(model, name)
            start = time.perf_counter()
            forward(context)  # compiles, for compile variants
            first_call = time.perf_counter() - start
            seconds = median_seconds(lambda c=context: forward(c), device, repeats)
        except Exception as e:  # a variant that cannot run is a finding of the report, with its error
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            continue
        finally:
            if name == "channels_last":
                model.to(memory_format=torch.contiguous_format)
        out[name] = {"speedup": base / seconds, "baseline_s": base, "seconds": seconds,
                     "first_call_s": first_call}
    out["winners"] = [n for n in variants if out[n].get("speedup", 0.0) > 1.02]
    return out


def run(
    out_dir: str | Path,
    *,
    quick: bool = False,
    device: str | None = None,
    backbone: str = "large",
    image_size: int = 640,
    max_batch: int = 16,
    matmul_size: int = 8192,
    variants: Sequence[str] | None = None,
    vocabulary: Vocabulary | None = None,
    repeats: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure training, inference, MFU and variants; writes ``gpu.json`` and returns the same dict.

    Args:
        out_dir: folder for ``gpu.json``.
        quick: 3 repeats instead of 10 and no variants (unless given).
        device: "cuda" or "cpu"; None takes CUDA, or skips when there is none.
        backbone: BEiT-3 preset ("large" is the paper's; "tiny" for a CPU smoke run).
        image_size: side of the square input images, pixels (a multiple of 32).
        max_batch: largest training/inference batch tried.
        matmul_size: side of the bf16 matmul that measures the device's peak rate.
        variants: inference variants to compare; None: all of :data:`VARIANTS` (none when quick).
        vocabulary: the classes to segment; None: the 133 COCO panoptic classes.
        repeats: timed repeats per figure, overriding the ``quick`` choice.
        model_kwargs: other :class:`OMTSeg` arguments (the defaults are the paper's head).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if device is None and not torch.cuda.is_available():
        result: dict[str, Any] = {"skipped": "no CUDA device: skipped", "torch": torch.__version__}
        save_json(result, out / "gpu.json", indent=2)
        return result
    dev = torch.device(device or "cuda")
    repeats = repeats or (3 if quick else 10)
    variants = variants if variants is not None else (() if quick else VARIANTS)
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside autocast (norms' stats, losses)
    vocabulary = vocabulary or coco_vocabulary()
    model = OMTSeg(backbone=backbone, img_size=image_size, **dict(model_kwargs or {}))  # type: ignore[arg-type]
    model.to(dev)
    peak = matmul_flops_per_s(dev, matmul_size, repeats)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "backbone_preset": backbone,
        "image_size": image_size,
        "vocabulary_classes": len(vocabulary),
        "text_chunks": len(model.prompts.tokenize(vocabulary)),
        "matmul_bf16_tflops": peak / 1e12,
        "repeats": repeats,
    }
    result["train"] = measure_training(model, vocabulary, image_size, dev, max_batch=max_batch,
                                       repeats=repeats, peak_flops=peak)
    _free(dev)
    batch = min(max_batch, 16)
    result["inference"] = measure_inference(model, vocabulary, image_size, dev, batch=batch, repeats=repeats,
                                            peak_flops=peak)
    train_batch = result["train"]["batch_size"]
    result["backbone"] = measure_backbone(model, vocabulary, image_size, dev, batch=train_batch,
                                          repeats=repeats, peak_flops=peak)
    if variants:
        result["variants"] = compare_variants(model, vocabulary, image_size, dev, batch=batch,
                                              repeats=repeats, variants=variants)
    save_json(result, out / "gpu.json", indent=2)
    return result


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/gpu")
    parser.add_argument("--quick", action="store_true", help="3 repeats, no variants")
    parser.add_argument("--max-batch", type=int, default=16)
    ns = parser.parse_args(args)
    print(json.dumps(run(ns.out, quick=ns.quick, max_batch=ns.max_batch), indent=2))


if __name__ == "__main__":
    main()
