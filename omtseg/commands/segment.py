"""``omtseg segment``: segment image files with your own classes, no config file needed.

    omtseg segment photos/ extra.jpg --ckpt model.ckpt --classes cat dog "tv, monitor" "stuff: sky" --out out/
    omtseg segment photos/ --ckpt model.ckpt --vocabulary classes.txt --out out/ [--captioner captioner.ckpt]
    omtseg segment photos/ --onnx model.onnx --classes cat dog "stuff: sky" --out out/ [--device cuda]

``--onnx`` runs a file written by ``omtseg export`` with ONNX Runtime (CPU provider; CUDA with ``--device
cuda`` and onnxruntime-gpu) instead of the checkpoint: the same outputs as the checkpoint gives for images
padded to the file's image size (``--image-size`` then defaults to that size; no captioner).

Folders are read one level deep (every file but hidden ones). Outputs under ``--out``, as ``omtseg predict``
writes them (:mod:`omtseg.callbacks`) and with the same values for the same checkpoint, images, classes and
batches (``--batch-size`` as the recipe's ``eval_batch_size``: another batching changes float rounding, about
1e-6 in scores):

    panoptic.json            COCO panoptic predictions (written at the end)
    panoptic/<name>.png      segment ids as R + 256 G + 256^2 B
    semantic/<name>.png      per-pixel category id (1..K in class order: things, then stuff)
    overlays/<name>.png      the image with colored, named (and captioned) segments
    segments.jsonl           one line per file: its segments, or the reason it was skipped

A file that is empty, unreadable, corrupt or not an image is reported (name and reason) and skipped; the
others are still written, a summary ends the run, and the exit status is 1 when any file failed. Every file
is written atomically (the JSONL line by line), and a previous run's ``panoptic.json`` is removed at the
start, so an interrupted run never leaves outputs that look complete.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from omtseg.api import SegmentationResult, Segmenter
from omtseg.data.vocabulary import parse_class_list, read_class_list
from omtseg.evaluation.export import categories_json, semantic_category_map
from omtseg.io import read_checked, save_image, save_json
from omtseg.types import Sample, Vocabulary

OVERLAY_MIN_SIDE = 512
WRITTEN_TASKS = ("panoptic", "semantic")
"""What the files hold; instances are not written, so not computed (a full-size mask each)."""
"""Overlays of smaller images are enlarged to this short side, as ``omtseg predict`` draws them."""


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files to segment: each file given, and the files of each folder (sorted, hidden ones left out).

    Paths that do not exist are kept, so they are reported with the other failures.

    Raises:
        ValueError: nothing to segment, or two files that would write the same output name.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if not p.name.startswith(".") and not p.is_dir())
        else:
            files.append(item)
    if not files:
        raise ValueError(f"No files to segment in {[str(i) for i in inputs]}; give image files or folders.")
    owners: dict[str, Path] = {}
    for path in files:
        png = Path(path.name).with_suffix(".png").name
        if png in owners:
            raise ValueError(
                f"{owners[png]} and {path} would both write {png}; segment them into different --out folders."
            )
        owners[png] = path
    return files


class SegmentWriter:
    """Writes each result as it comes and ``panoptic.json`` at the end (see the module doc)."""

    def __init__(self, out: Path, vocabulary: Vocabulary, *, captions: bool) -> None:
        self.out = out
        self.vocabulary = vocabulary
        self.captions = captions
        self.annotations: list[dict[str, Any]] = []
        out.mkdir(parents=True, exist_ok=True)
        (out / "panoptic.json").unlink(missing_ok=True)
        self._lines = open(out / "segments.jsonl", "w", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def _line(self, record: dict[str, Any]) -> None:
        # One write per whole line: an interruption leaves complete lines only.
        self._lines.write(json.dumps(record) + "\n")
        self._lines.flush()

    def result(self, path: Path, result: SegmentationResult) -> None:
        record, png = result.to_coco()
        if self.captions:
            for entry, seg in zip(record["segments_info"], result.segments, strict=True):
                entry["caption"] = seg.get("caption")
        name = record["file_name"]
        save_image(np.asarray(png), self.out / "panoptic" / name)
        assert result.raw.semantic is not None
        labels = result.raw.semantic.labels
        save_image(semantic_category_map(labels, self.vocabulary), self.out / "semantic" / name)
        save_image(np.asarray(result.overlay(min_side=OVERLAY_MIN_SIDE)), self.out / "overlays" / name)
        self.annotations.append(record)
        self._line({"file": str(path), **result.to_json()})

    def failure(self, path: Path, reason: str) -> None:
        self._line({"file": str(path), "error": reason})

    def finish(self) -> None:
        """Write ``panoptic.json``: only a run that went through has one."""
        if self.annotations:
            panoptic = {"annotations": self.annotations, "categories": categories_json(self.vocabulary)}
            save_json(panoptic, self.out / "panoptic.json")

    def close(self) -> None:
        self._lines.close()


def run(
    files: Sequence[Path],
    segmenter: Segmenter,
    classes: Sequence[str],
    out: Path,
    *,
    progress: bool = True,
    **thresholds: Any,
) -> dict[Path, str]:
    """Segment ``files`` into ``out``; returns the files that failed, with the reason."""
    vocabulary = segmenter.vocabulary(classes)
    writer = SegmentWriter(out, vocabulary, captions=segmenter.captioner is not None)
    failed: dict[Path, str] = {}
    pending: list[tuple[Path, tuple[np.ndarray, Sample]]] = []

    def flush() -> None:
        results = segmenter.segment_samples([s for _, s in pending], vocabulary, tasks=WRITTEN_TASKS,
                                            **thresholds)  # fmt: skip
        for (path, _), result in zip(pending, results, strict=True):
            writer.result(path, result)
        pending.clear()

    columns = (TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True), disable=not progress)
    try:
        with bar:
            for path in bar.track(files):
                try:
                    pending.append((path, segmenter.sample(read_checked(path), path.name)))
                except ValueError as e:
                    failed[path] = str(e)
                    writer.failure(path, str(e))
                    bar.console.print(f"skipped {path}: {e}")
                if len(pending) == segmenter.batch_size:
                    flush()
            if pending:
                flush()
        writer.finish()
    finally:
        writer.close()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg segment``); returns the exit status (1 when a file failed)."""
    parser = argparse.ArgumentParser(
        prog="omtseg segment",
        description="Segment image files (or folders of them) with your own classes; writes COCO panoptic "
        "JSON + PNGs, semantic PNGs, overlays and one JSON line per file into --out.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and folders of images")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="segmenter checkpoint written by `omtseg fit`")
    model.add_argument("--onnx", help="exported segmenter written by `omtseg export`, run by ONNX Runtime")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument(
        "--classes", nargs="+", help='one argument per class: cat dog "tv, monitor" (synonyms) "stuff: sky"'
    )
    names.add_argument("--vocabulary", help="text file, one class per line (as --classes)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--captioner", default=None, help="captioner checkpoint: caption every segment")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument(
        "--image-size", type=int, default=None,
        help="long side images are resized to, pixels (default: the training data config's eval_size as the "
        "checkpoint records it, else 640; with --onnx the file's longer side)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--object-threshold", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument("--overlap-threshold", type=float, default=None, help="default: the checkpoint's")
    parser.add_argument(
        "--seen-class-penalty", type=float, default=None,
        help="calibration: lower the trained classes' logits by this (see `omtseg calibrate`; default: the "
        "checkpoint's, 0 unless set)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.vocabulary is not None:
        things, stuff = read_class_list(args.vocabulary)
        classes = [*things, *(f"stuff: {s}" for s in stuff)]
    else:
        classes = list(args.classes)
        parse_class_list(classes, source="--classes")
    files = list_inputs(args.inputs)
    if args.onnx is not None:
        if args.captioner is not None:
            raise ValueError("--captioner needs --ckpt: an exported segmenter runs without a captioner.")
        segmenter = Segmenter.from_onnx(
            args.onnx, device=args.device, image_size=args.image_size, batch_size=args.batch_size
        )
    else:
        size = {} if args.image_size is None else {"image_size": args.image_size}  # default: the ckpt's
        segmenter = Segmenter.from_checkpoint(
            args.ckpt, device=args.device, captioner=args.captioner, batch_size=args.batch_size, **size
        )
    failed = run(
        files,
        segmenter,
        classes,
        args.out,
        progress=not args.quiet,
        object_threshold=args.object_threshold,
        overlap_threshold=args.overlap_threshold,
        seen_class_penalty=args.seen_class_penalty,
    )
    done = len(files) - len(failed)
    print(f"Segmented {done} of {len(files)} files into {args.out}/ (panoptic.json, panoptic/, semantic/, "
          "overlays/, segments.jsonl).")
    if failed:
        print(f"{len(failed)} failed:")
        for path, reason in failed.items():
            print(f"  {path}: {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
