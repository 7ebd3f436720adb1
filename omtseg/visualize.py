"""Pictures for people: segments blended over the image with class names (and segment captions), and small
line plots (PIL only)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from omtseg.types import IGNORE_INDEX, ImageResult, PanopticSegment, Vocabulary

_FONT = ImageFont.load_default()
_SERIES_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _integers(array: np.ndarray) -> np.ndarray:
    # Signed integer maps stay as they are (an int32 id map of a 4000 x 3000 photo is 48 MiB, int64 96).
    return array if array.dtype.kind == "i" else array.astype(np.int64)


def _jitter(color: tuple[int, int, int], index: int) -> tuple[int, int, int]:
    # Instances of one class share a hue; a deterministic brightness shift tells neighbours apart.
    if index == 0:
        return color
    shift = ((index * 37) % 81) - 40
    return tuple(int(np.clip(c + shift, 0, 255)) for c in color)  # type: ignore[return-value]


_ROWS = 256
"""Rows of a picture processed at once: per-pixel temporaries of a 4000 x 3000 photo stay a few MiB."""


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    # The centroid can fall outside a non-convex segment; take the segment pixel nearest to it (the first in
    # row-major order on ties), a band of rows at a time.
    row_counts, col_counts = mask.sum(1), mask.sum(0)
    area = row_counts.sum()
    cy = (np.arange(mask.shape[0]) * row_counts).sum() / area
    cx = (np.arange(mask.shape[1]) * col_counts).sum() / area
    best: tuple[float, int, int] | None = None
    for top in range(0, mask.shape[0], _ROWS):
        ys, xs = np.nonzero(mask[top : top + _ROWS])
        if ys.size == 0:
            continue
        ys = ys + top
        d = (ys - cy) ** 2 + (xs - cx) ** 2
        i = int(np.argmin(d))
        if best is None or d[i] < best[0]:
            best = (float(d[i]), int(xs[i]), int(ys[i]))
    assert best is not None, "anchors are asked for non-empty masks"
    return best[1], best[2]


def _boundaries(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    return edge


def _label_text(name: str, caption: str | None, picture_width: int) -> str:
    """The class name, then the caption wrapped to the picture's width (the default font is ~6 px a char)."""
    if not caption:
        return name
    return "\n".join([name, *textwrap.wrap(caption, width=max(picture_width // 6 - 1, 8))])


def _draw_labels(picture: Image.Image, labels: Sequence[tuple[str, tuple[int, int]]]) -> None:
    draw = ImageDraw.Draw(picture)
    w, h = picture.size
    for text, (x, y) in labels:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_FONT)
        tw, th = right - left, bottom - top
        # Centre the label on its anchor but keep it inside the picture.
        x0 = int(np.clip(x - tw // 2, 0, max(w - tw - 2, 0)))
        y0 = int(np.clip(y - th // 2, 0, max(h - th - 2, 0)))
        draw.rectangle((x0, y0, x0 + tw + 2, y0 + th + 2), fill=(0, 0, 0))
        draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=(255, 255, 255), font=_FONT)


def _blend(
    image: np.ndarray, colors: np.ndarray, painted: np.ndarray, edges: np.ndarray, alpha: float
) -> np.ndarray:
    picture = np.empty_like(image)
    for top in range(0, image.shape[0], _ROWS):
        rows = slice(top, top + _ROWS)
        out, color, paint = image[rows].astype(np.float32), colors[rows].astype(np.float32), painted[rows]
        out[paint] = (1.0 - alpha) * out[paint] + alpha * color[paint]
        out[edges[rows] & paint] = 255.0
        picture[rows] = out.round().clip(0, 255).astype(np.uint8)
    return picture


def _check_image(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}.")
    if image.shape[:2] != size:
        raise ValueError(f"Image size {image.shape[:2]} differs from the segmentation size {size}.")
    return image


def overlay_panoptic(
    image: np.ndarray | torch.Tensor,
    id_map: np.ndarray | torch.Tensor,
    segments: Sequence[PanopticSegment],
    vocabulary: Vocabulary,
    *,
    alpha: float = 0.55,
    labels: bool = True,
    captions: bool = True,
) -> np.ndarray:
    """Blend each panoptic segment in its class color over the image and write its class name on it.

    Args:
        image: (H, W, 3) uint8 RGB.
        id_map: (H, W) integer segment ids, 0 = void (left unpainted).
        segments: the segments of ``id_map``; ``label`` indexes ``vocabulary``.
        vocabulary: names and colors.
        alpha: color opacity in [0, 1].
        labels: write class names.
        captions: with ``labels``, write each segment's ``caption`` (when set) under its class name.

    Returns:
        (H, W, 3) uint8 picture.
    """
    ids = _integers(_as_numpy(id_map))
    image = _check_image(_as_numpy(image), ids.shape)
    colors = np.zeros(ids.shape + (3,), dtype=np.uint8)  # whole values: _blend computes in float32
    texts: list[tuple[str, tuple[int, int]]] = []
    seen: dict[int, int] = {}
    for seg in segments:
        mask = ids == seg.id
        if not mask.any():
            continue
        index = seen.get(seg.label, 0)
        seen[seg.label] = index + 1
        colors[mask] = _jitter(vocabulary.colors[seg.label], index)
        if labels:
            caption = seg.caption if captions else None
            text = _label_text(vocabulary.names[seg.label], caption, ids.shape[1])
            texts.append((text, _label_anchor(mask)))
    picture = Image.fromarray(_blend(image, colors, ids > 0, _boundaries(ids), alpha))
    _draw_labels(picture, texts)
    return np.asarray(picture)


def overlay_semantic(
    image: np.ndarray | torch.Tensor,
    semantic: np.ndarray | torch.Tensor,
    vocabulary: Vocabulary,
    *,
    alpha: float = 0.55,
    labels: bool = True,
) -> np.ndarray:
    """Blend a per-pixel class map over the image, one name per class present.

    Args:
        image: (H, W, 3) uint8 RGB.
        semantic: (H, W) class indices, :data:`IGNORE_INDEX` left unpainted.
        vocabulary: names and colors.
        alpha: color opacity in [0, 1].
        labels: write class names.

    Returns:
        (H, W, 3) uint8 picture.
    """
    classes = _integers(_as_numpy(semantic))
    image = _check_image(_as_numpy(image), classes.shape)
    if classes.max(initial=IGNORE_INDEX) >= len(vocabulary):
        raise ValueError(f"Class index {classes.max()} is outside the {len(vocabulary)}-class vocabulary.")
    palette = np.asarray(vocabulary.colors, dtype=np.uint8)
    painted = classes != IGNORE_INDEX
    colors = np.zeros(classes.shape + (3,), dtype=np.uint8)
    colors[painted] = palette[classes[painted]]
    texts = [
        (vocabulary.names[k], _label_anchor(classes == k)) for k in np.unique(classes[painted]).tolist()
    ] if labels else []
    picture = Image.fromarray(_blend(image, colors, painted, _boundaries(classes), alpha))
    _draw_labels(picture, texts)
    return np.asarray(picture)


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, ...) -> (scale H, scale W, ...) by pixel repetition (keeps ids and labels exact)."""
    return array.repeat(scale, axis=0).repeat(scale, axis=1)


def overlay_result(
    image: np.ndarray,
    result: ImageResult,
    vocabulary: Vocabulary,
    *,
    alpha: float = 0.55,
    min_side: int = 512,
) -> np.ndarray:
    """The picture of one image's result: its panoptic segments (else its semantic classes) with names.

    Args:
        image: (H0, W0, 3) uint8 RGB, the image at the result's size.
        result: panoptic and/or semantic output at (H0, W0).
        vocabulary: names and colors.
        alpha: color opacity.
        min_side: smaller images are enlarged (whole factors, nearest) until their short side reaches this
            many pixels, so that class names stay readable on tiny images.

    Returns:
        (s H0, s W0, 3) uint8 picture, s the enlargement factor (the image itself when nothing to draw).
    """
    scale = max(1, -(-min_side // min(image.shape[:2])))
    if result.panoptic is not None:
        ids = _enlarge(result.panoptic.id_map.cpu().numpy(), scale)
        segments = result.panoptic.segments
        return overlay_panoptic(_enlarge(image, scale), ids, segments, vocabulary, alpha=alpha)
    if result.semantic is not None:
        classes = _enlarge(result.semantic.labels.cpu().numpy(), scale)
        return overlay_semantic(_enlarge(image, scale), classes, vocabulary, alpha=alpha)
    return image


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (640, 400),
) -> np.ndarray:
    """A minimal line plot of named (x, y) series with axes, ticks and a legend.

    Args:
        series: name -> points; series without points are skipped.
        title, x_label, y_label: captions.
        size: (width, height) in pixels.

    Returns:
        (height, width, 3) uint8 picture.
    """
    width, height = size
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    left, right, top, bottom = 60, width - 20, 30, height - 45
    points = [p for pts in series.values() for p in pts]
    draw.text((left, 8), title, fill=(0, 0, 0), font=_FONT)
    draw.text(((left + right) // 2 - 3 * len(x_label), height - 18), x_label, fill=(0, 0, 0), font=_FONT)
    draw.text((4, 8), y_label, fill=(0, 0, 0), font=_FONT)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    if not points:
        return np.asarray(picture)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(ys)
    # Degenerate ranges (one point, a flat curve) still need a non-zero span to map onto pixels.
    x1, y1 = (x1 if x1 > x0 else x0 + 1.0), (y1 if y1 > y0 else y0 + 1.0)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for i in range(5):
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        _, py = to_px(x0, yv)
        px, _ = to_px(xv, y0)
        draw.line((left, py, right, py), fill=(225, 225, 225))
        draw.text((4, py - 5), f"{yv:.3g}", fill=(0, 0, 0), font=_FONT)
        draw.text((px - 8, bottom + 5), f"{xv:.3g}", fill=(0, 0, 0), font=_FONT)
    for n, (name, pts) in enumerate((k, v) for k, v in series.items() if len(v)):
        color = _SERIES_COLORS[n % len(_SERIES_COLORS)]
        pixels = [to_px(x, y) for x, y in pts]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
        draw.text((right - 150, 8 + 12 * n), f"- {name}", fill=color, font=_FONT)
    return np.asarray(picture)


_REGION_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                  (240, 50, 230), (210, 245, 60))  # fmt: skip


def overlay_regions(
    image: np.ndarray,
    masks: Sequence[np.ndarray | torch.Tensor],
    captions: Sequence[str],
    *,
    prompts: Sequence[tuple[str, Sequence[float]] | None] = (),
    alpha: float = 0.45,
    min_side: int = 512,
) -> np.ndarray:
    """Captioned regions (which may overlap) over the image: each in its own color and outline, its prompt
    drawn (a box's outline, a point's dot) and its number and caption written on it.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: per region, (H, W) bool.
        captions: per region, its caption.
        prompts: per region, ``("box", [x0, y0, x1, y1])``, ``("point", [x, y])`` (image pixels) or None.
        alpha: color opacity.
        min_side: smaller images are enlarged (whole factors) until their short side has this many pixels.

    Returns:
        (s H, s W, 3) uint8 picture, s the enlargement factor.
    """
    if len(masks) != len(captions) or (prompts and len(prompts) != len(masks)):
        raise ValueError(f"Got {len(masks)} masks, {len(captions)} captions and {len(prompts)} prompts.")
    image = _check_image(_as_numpy(image), _as_numpy(image).shape[:2])
    scale = max(1, -(-min_side // min(image.shape[:2])))
    out = _enlarge(image, scale)
    texts: list[tuple[str, tuple[int, int]]] = []
    for i, (raw, caption) in enumerate(zip(masks, captions, strict=True)):
        mask = _enlarge(_as_numpy(raw).astype(bool), scale)
        if mask.shape != out.shape[:2]:
            raise ValueError(f"Mask {i} is {mask.shape}, the image {image.shape[:2]}.")
        colors = np.zeros(out.shape, dtype=np.float32)
        colors[mask] = _REGION_COLORS[i % len(_REGION_COLORS)]
        out = _blend(out, colors, mask, _boundaries(mask.astype(np.int64)), alpha)
        if mask.any():
            texts.append((_label_text(str(i + 1), caption, out.shape[1]), _label_anchor(mask)))
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    for i, prompt in enumerate(prompts):
        color = _REGION_COLORS[i % len(_REGION_COLORS)]
        if prompt is not None and prompt[0] == "box":
            x0, y0, x1, y1 = (v * scale for v in prompt[1])
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=max(1, scale))
        elif prompt is not None and prompt[0] == "point":
            x, y = ((v + 0.5) * scale for v in prompt[1])
            r = max(3, 2 * scale)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=(255, 255, 255))
    _draw_labels(picture, _unstacked(draw, texts, picture.size))
    return np.asarray(picture)


def _unstacked(
    draw: ImageDraw.ImageDraw, labels: Sequence[tuple[str, tuple[int, int]]], size: tuple[int, int]
) -> list[tuple[str, tuple[int, int]]]:
    """Labels moved down (then up) until none covers another: regions of several prompts often coincide."""
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for text, (x, y) in labels:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=_FONT)
        tw, th = int(right - left) + 2, int(bottom - top) + 2
        n = len(labels)
        for k in sorted(range(-n, n + 1), key=lambda k: (abs(k), k < 0)):  # 0, 1, -1, 2, -2 ...
            cy = int(np.clip(y + k * (th + 1), th // 2, max(size[1] - th // 2 - 1, th // 2)))
            box = (x - tw // 2, cy - th // 2, x + tw // 2, cy + th // 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        out.append((text, (x, cy)))
    return out
