"""CPU speed of the tiny demo model (configs/demo.yaml): training step, inference, and data loading.

The model, criterion, optimizer and data come from the demo recipe through the CLI's own builder
(``omtseg.cli.build_cli(..., run=False)``), so this measures what ``make demo`` trains. Measured:

- training step (the LightningModule's ``training_step`` + backward + Lion step) on prefetched batches,
  median over repeats, with a per-phase breakdown (BEiT-3 blocks, adapter interactions, pixel decoder,
  transformer decoder, criterion, backward, optimizer) from module hooks;
- inference (``OMTSeg.predict``, all three tasks) per image for the demo's validation batch and for a single
  image, with the forward pass alone beside it so post-processing shows separately;
- data loading images/s for 0, 1 and 2 workers: the synthetic demo split (64 px) and the real COCO panoptic
  sample (tests/fixtures, replicated, 640 px crops as COCO training uses);
- the top operators of one training step and one inference batch (torch.profiler, self CPU time).

Run: ``python -m benchmarks.train_infer --out outputs/bench/train_infer [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.run import bar_chart
from omtseg.cli import build_cli
from omtseg.data.coco_panoptic import PanopticSplit
from omtseg.data.collate import collate
from omtseg.data.datamodule import PanopticDataModule, SyntheticData
from omtseg.io import load_json, save_json
from omtseg.lit_module import OMTSegModule
from omtseg.types import Batch

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
COCO_SAMPLE = REPO / "tests" / "fixtures" / "coco_panoptic_sample"
WORKERS = (0, 1, 2)
COCO_COPIES = 8  # the 2-image sample, replicated to 16 images so every worker count has batches to load
TASKS = ("panoptic", "semantic", "instance")


def build_demo(out_dir: Path, config: Path = DEMO_CONFIG) -> tuple[OMTSegModule, PanopticDataModule]:
    """The demo's LightningModule and datamodule (synthetic data under ``out_dir``), without loggers."""
    args = [
        "--config", str(config),
        "--data.init_args.root", str(out_dir / "synthetic"),
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--trainer.default_root_dir", str(out_dir / "trainer"),
    ]  # fmt: skip
    cli = build_cli(args, run=False)
    return cli.model, cli.datamodule


class PhaseTimer:
    """Wall time spent inside given submodules, accumulated per phase over the calls made while active.

    The model runs eagerly on CPU, so the time between a module's pre- and post-forward hooks is its cost.
    """

    def __init__(self, phases: dict[str, list[nn.Module]]) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False
        for name, modules in phases.items():
            for module in modules:
                module.register_forward_pre_hook(self._start(name, module))
                module.register_forward_hook(self._stop(name, module))
        self._started: dict[int, float] = {}

    def _start(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._started[id(module)] = time.perf_counter()

        return hook

    def _stop(self, name: str, module: nn.Module) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if self.active:
                self.seconds[name] += time.perf_counter() - self._started.pop(id(module))

        return hook

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        self.seconds = defaultdict(float)
        self.active = True
        try:
            yield self.seconds
        finally:
            self.active = False


def _phase_timer(module: OMTSegModule) -> PhaseTimer:
    model = module.model
    return PhaseTimer(
        {
            "adapter": [model.adapter],
            "beit3_blocks": list(model.backbone.blocks),
            "pixel_decoder": [model.pixel_decoder],
            "decoder": [model.decoder],
            "criterion": [module.criterion],
        }
    )


def _median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def time_training(module: OMTSegModule, batches: list[Batch], repeats: int) -> dict[str, Any]:
    """Median training-step time and its phases over ``repeats`` steps (after two warm-up steps)."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    timer = _phase_timer(module)
    module.train()
    phases: dict[str, list[float]] = defaultdict(list)
    steps = []
    with warnings.catch_warnings():
        # training_step logs through self.log, which only warns when no Trainer is attached.
        warnings.filterwarnings("ignore", message=".*self.log.*")
        for i in range(2 + repeats):
            batch = batches[i % len(batches)]
            start = time.perf_counter()
            with timer.measure() as inside:
                loss = module.training_step(batch, i)
            forward_end = time.perf_counter()
            loss.backward()
            backward_end = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end = time.perf_counter()
            if i < 2:
                continue
            steps.append(end - start)
            measured = dict(inside)
            measured["adapter"] -= measured["beit3_blocks"]  # adapter's own interactions, blocks apart
            hooked = sum(inside[k] for k in ("adapter", "pixel_decoder", "decoder", "criterion"))
            measured["forward_other"] = forward_end - start - hooked
            measured["backward"] = backward_end - forward_end
            measured["optimizer"] = end - backward_end
            for name, seconds in measured.items():
                phases[name].append(seconds)
    step_ms = _median_ms(steps)
    batch_size = len(batches[0])
    return {
        "batch_size": batch_size,
        "image_size": list(batches[0].images.shape[-2:]),
        "repeats": repeats,
        "step_ms": step_ms,
        "images_per_s": batch_size / (step_ms / 1000.0),
        "phases_ms": {name: _median_ms(values) for name, values in phases.items()},
    }


def _interleaved_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median ms of each function, called in alternation (so background load hits all alike)."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: _median_ms(values) for name, values in samples.items()}


def time_inference(module: OMTSegModule, batch: Batch, single: Batch, repeats: int) -> dict[str, Any]:
    """Per-image ``predict`` time (all tasks) for a batch and for one image, plus the forward alone."""
    model = module.model.eval()
    out: dict[str, Any] = {"tasks": list(TASKS), "repeats": repeats}
    with torch.no_grad():
        for name, b in (("batched", batch), ("single", single)):
            ms = _interleaved_ms(
                {
                    "predict": lambda b=b: model.predict(b, tasks=TASKS),
                    "forward": lambda b=b: model(b.images, b.vocabulary),
                },
                repeats,
            )
            out[name] = {
                "batch_size": len(b),
                "ms_per_image": ms["predict"] / len(b),
                "forward_ms_per_image": ms["forward"] / len(b),
                "postprocess_ms_per_image": (ms["predict"] - ms["forward"]) / len(b),
                "images_per_s": 1000.0 * len(b) / ms["predict"],
            }
    return out


def top_operators(fn: Callable[[], Any], count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` operators with the most self CPU time in one call of ``fn`` (already warmed up)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000.0,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in ranked
    ]


# ------------------------------------------------------------------------------------------- data loading


def _replicated_coco_sample(root: Path, copies: int) -> PanopticSplit:
    """The COCO panoptic sample, each image copied ``copies`` times under new ids (a bigger real split)."""
    data = load_json(COCO_SAMPLE / "panoptic.json")
    images, annotations = [], []
    for c in range(copies):
        for image, ann in zip(data["images"], data["annotations"], strict=True):
            stem = f"{c:02d}_{Path(image['file_name']).stem}"
            new_id = c * 10**7 + image["id"]
            sources = ((image["file_name"], "images", ".jpg"), (ann["file_name"], "panoptic", ".png"))
            for src, folder, suffix in sources:
                target = root / folder / f"{stem}{suffix}"
                if not target.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(COCO_SAMPLE / folder / src, target)
            images.append({**image, "id": new_id, "file_name": f"{stem}.jpg"})
            annotations.append({**ann, "image_id": new_id, "file_name": f"{stem}.png"})
    save_json({**data, "images": images, "annotations": annotations}, root / "panoptic.json")
    return PanopticSplit(image_dir="images", panoptic_dir="panoptic", panoptic_json="panoptic.json")


def _synthetic_datamodule(root: Path, workers: int) -> PanopticDataModule:
    # The demo's data section, verbatim but for the root and the worker count.
    config = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "data" / "synthetic.yaml"))
    assert isinstance(config, dict)
    kwargs = dict(config["init_args"])
    kwargs.update(root=str(root), num_workers=workers, synthetic=SyntheticData(**kwargs["synthetic"]))
    return PanopticDataModule(**kwargs)


def _coco_datamodule(root: Path, workers: int) -> PanopticDataModule:
    # The datamodule's defaults are COCO training's: 640 px crops, scale jitter 0.5-2.0, batch 2.
    split = PanopticSplit(image_dir="images", panoptic_dir="panoptic", panoptic_json="panoptic.json")
    return PanopticDataModule(root=str(root), train=split, num_workers=workers)


def loading_throughput(
    make: Callable[[int], PanopticDataModule], *, batches: int, repeats: int
) -> dict[str, Any]:
    """Training-loader images/s per worker count: median over ``repeats`` passes of ``batches`` batches.

    Each pass is a fresh epoch iterator whose first batch is not timed (workers start or refill then).
    """
    out: dict[str, Any] = {}
    for workers in WORKERS:
        datamodule = make(workers)
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        if len(loader) <= batches:
            raise ValueError(f"The loader has {len(loader)} batches; {batches} timed ones need more data.")
        rates = []
        for _ in range(repeats):
            iterator = iter(loader)
            next(iterator)
            start, images = time.perf_counter(), 0
            for _ in range(batches):
                images += len(next(iterator))
            rates.append(images / (time.perf_counter() - start))
            del iterator
        out[f"workers_{workers}"] = {"images_per_s": statistics.median(rates), "images_timed": images}
        del loader  # shuts the persistent workers down before the next count starts its own
    return out


def run(out_dir: str | Path, *, quick: bool = False, config: str | Path = DEMO_CONFIG) -> dict[str, Any]:
    """Measure everything (see the module docstring); writes ``train_infer.json`` and ``data_loading.png``.

    Args:
        out_dir: working folder (synthetic data, the replicated COCO sample, results).
        quick: 2 repeats instead of 7 (a smoke run).
        config: the recipe whose model, optimizer and data are measured.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 2 if quick else 7
    torch.manual_seed(0)
    module, datamodule = build_demo(out, Path(config))
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_iter = iter(datamodule.train_dataloader())
    batches = [next(train_iter) for _ in range(4)]
    val_batch = next(iter(datamodule.val_dataloader()))
    val_set = datamodule.datasets["val"]
    divisor = datamodule.size_divisibility
    single = collate([val_set[0]], vocabulary=val_set.vocabulary, size_divisibility=divisor)
    result: dict[str, Any] = {
        "config": str(Path(config).relative_to(REPO)) if Path(config).is_relative_to(REPO) else str(config),
        "threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    result["train"] = time_training(module, batches, repeats)
    result["inference"] = time_inference(module, val_batch, single, repeats)

    def train_step() -> None:
        module.train()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            module.training_step(batches[0], 0).backward()
        module.zero_grad(set_to_none=True)

    def infer() -> None:
        module.eval()
        with torch.no_grad():
            module.model.predict(val_batch, tasks=TASKS)

    result["profile"] = {"train_step": top_operators(train_step), "inference_batch": top_operators(infer)}
    coco_root = out / "coco_sample"
    _replicated_coco_sample(coco_root, COCO_COPIES)
    result["data_loading"] = {
        "synthetic_64px": loading_throughput(
            lambda w: _synthetic_datamodule(out / "synthetic", w), batches=6, repeats=min(repeats, 3)
        ),
        "coco_sample_640px": loading_throughput(
            lambda w: _coco_datamodule(coco_root, w), batches=3, repeats=min(repeats, 3)
        ),
    }
    labels, values = [], []
    for dataset, per_workers in result["data_loading"].items():
        for key, row in per_workers.items():
            labels.append(f"{dataset}, {key.replace('_', ' ')}")
            values.append(row["images_per_s"])
    bar_chart(out / "data_loading.png", "training data loading, images/s (CPU)", labels, values)
    save_json(result, out / "train_infer.json", indent=2)
    return result


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/train_infer")
    parser.add_argument("--quick", action="store_true", help="2 repeats (a smoke run)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="recipe to measure")
    ns = parser.parse_args(args)
    print(json.dumps(run(ns.out, quick=ns.quick, config=ns.config), indent=2))


if __name__ == "__main__":
    main()
