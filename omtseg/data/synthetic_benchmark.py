"""Tiny stand-ins for the zero-shot benchmarks, written in each one's prepared layout and file formats.

They let the evaluation harness (``omtseg test`` with ``configs/eval/*.yaml``, ``omtseg eval-all``)
run end to end where the real datasets are absent: tests, CI and smoke runs. Each image holds a background
class and a few rectangles of other classes, painted in the classes' colors, with an unlabelled strip that
carries the benchmark's ignore value (255 or 65535). Label maps are 8-bit PNG or uint16 TIFF exactly as
``omtseg prepare`` writes them; ADE20K-150 panoptic also gets its COCO-panoptic JSON and PNGs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from omtseg.data.benchmark_registry import BenchmarkSpec, benchmark_spec, zero_shot_vocabulary
from omtseg.io import id2rgb, save_image, save_json
from omtseg.types import Vocabulary

NUM_RECTANGLES = 3
"""Foreground rectangles per image (each a distinct class; an instance when the class is a thing)."""


def _draw_classes(vocabulary: Vocabulary, rng: np.random.Generator, panoptic: bool) -> list[int]:
    """Distinct class indices: a background first, then the rectangles' classes."""
    k = len(vocabulary)
    if not panoptic:
        return rng.choice(k, size=1 + NUM_RECTANGLES, replace=False).tolist()
    # Panoptic images get a stuff background and thing rectangles, so PQ has both kinds to score.
    stuff = [i for i in range(k) if not vocabulary.is_thing[i]]
    things = [i for i in range(k) if vocabulary.is_thing[i]]
    return [int(rng.choice(stuff)), *rng.choice(things, size=NUM_RECTANGLES, replace=False).tolist()]


def _layout(h: int, w: int, classes: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int64 class map (-1 unlabelled) and (H, W) int64 segment map (1-based, 0 unlabelled)."""
    labels = np.full((h, w), classes[0], dtype=np.int64)
    segments = np.ones((h, w), dtype=np.int64)
    for s, k in enumerate(classes[1:], start=2):
        top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        bottom = top + int(rng.integers(h // 4, h // 2 + 1))
        right = left + int(rng.integers(w // 4, w // 2 + 1))
        labels[top:bottom, left:right] = k
        segments[top:bottom, left:right] = s
    labels[-max(1, h // 16) :] = -1  # an unlabelled strip at the bottom, as annotators leave borders
    segments[labels < 0] = 0
    return labels, segments


def _image(labels: np.ndarray, vocabulary: Vocabulary, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: each class in its color plus noise, unlabelled pixels grey."""
    palette = np.array([*vocabulary.colors, (128, 128, 128)], dtype=np.int64)  # index -1 picks the grey
    noise = rng.integers(-20, 21, size=labels.shape + (3,))
    return np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)


def _segments_info(segments: np.ndarray, labels: np.ndarray, vocabulary: Vocabulary) -> list[dict[str, Any]]:
    info = []
    for segment_id in np.unique(segments[segments > 0]).tolist():
        mask = segments == segment_id
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        x, y = int(cols[0]), int(rows[0])
        label = int(labels[mask][0])
        info.append(
            {
                "id": segment_id,
                "category_id": vocabulary.category_ids[label],
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": [x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1],
            }
        )
    return info


def _categories(vocabulary: Vocabulary) -> list[dict[str, Any]]:
    # The records `omtseg prepare ade20k_150` writes: every synonym in the name, as the raw class list does.
    return [
        {"id": cid, "name": ", ".join(syn), "isthing": int(thing), "color": list(color)}
        for cid, syn, thing, color in zip(
            vocabulary.category_ids, vocabulary.synonyms, vocabulary.is_thing, vocabulary.colors, strict=True
        )
    ]


def write_synthetic_benchmark(
    root: str | os.PathLike[str],
    benchmark: str,
    *,
    num_images: int = 2,
    image_size: int = 64,
    seed: int = 0,
    split: str = "val",
) -> BenchmarkSpec:
    """Write ``num_images`` synthetic images of ``benchmark`` in its prepared layout under ``root``.

    Args:
        root: datasets root (the folder ``OMTSEG_DATASETS`` names).
        benchmark: a name of :data:`~omtseg.data.benchmark_registry.BENCHMARKS`; ``ade20k_150_panoptic``
            writes the panoptic JSON and PNGs as well as the semantic maps (it is also a valid
            ``ade20k_150`` layout).
        num_images: images to write.
        image_size: height in pixels; widths are ``3/4`` of it plus one, so resizing is exercised.
        seed: generator seed (the same arguments write the same files).
        split: ``"train"`` or ``"val"``.

    Returns:
        The benchmark's spec (its paths tell where the files went).

    Raises:
        ValueError: unknown benchmark or split, ``num_images < 1`` or ``image_size < 16``.
    """
    spec = benchmark_spec(benchmark)
    if num_images < 1 or image_size < 16:
        raise ValueError(
            f"num_images={num_images}, image_size={image_size}: write at least 1 image of at least 16 px."
        )
    vocabulary = zero_shot_vocabulary(spec.name)
    image_dir, label_dir = spec.path(spec.images, split, root), spec.path(spec.labels, split, root)
    label_dtype = np.uint16 if spec.label_suffix == ".tif" else np.uint8
    rng = np.random.default_rng(seed)
    h, w = image_size, image_size * 3 // 4 + 1
    images, annotations = [], []
    for i in range(num_images):
        stem = f"synthetic_{split}_{i:04d}"
        labels, segments = _layout(h, w, _draw_classes(vocabulary, rng, spec.is_panoptic), rng)
        save_image(_image(labels, vocabulary, rng), image_dir / f"{stem}.jpg")
        stored = np.where(labels < 0, spec.ignore_value, labels).astype(label_dtype)
        save_image(stored, label_dir / f"{stem}{spec.label_suffix}")
        if spec.panoptic_dir is not None:
            save_image(id2rgb(segments), spec.path(spec.panoptic_dir, split, root) / f"{stem}.png")
            images.append({"id": stem, "file_name": f"{stem}.jpg", "width": w, "height": h})
            info = _segments_info(segments, labels, vocabulary)
            annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": info})
    if spec.panoptic_json is not None:
        document = {"images": images, "annotations": annotations, "categories": _categories(vocabulary)}
        save_json(document, spec.path(spec.panoptic_json, split, root))
    return spec

