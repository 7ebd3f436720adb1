"""Drawing primitives of the synthetic datasets: stuff textures, thing silhouettes, shaded instances.

Pure numpy on a float (S, S, 3) canvas with pixel grids ``yy``/``xx`` from ``np.mgrid``; every random choice
comes from the caller's generator, so a dataset is deterministic given its seeds. Used by
:mod:`omtseg.data.synthetic` (the pipeline demo) and :mod:`omtseg.data.world` (the open-vocabulary world).
"""

from __future__ import annotations

import numpy as np

TEXTURES = ("gradient", "streaks", "speckle", "waves", "bricks", "asphalt", "flakes", "cracks")
SHAPES = ("circle", "ring", "square", "triangle", "star", "cross")


def texture(
    kind: str, color: tuple[int, int, int], rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """(S, S, 3) float image of one stuff texture of base ``color`` over the whole canvas."""
    if kind not in TEXTURES:
        raise ValueError(f"Unknown texture {kind!r}; choose one of {TEXTURES}.")
    s = yy.shape[0]
    base = np.asarray(color, dtype=np.float32) + rng.uniform(-10, 10, 3)
    img: np.ndarray = np.broadcast_to(base, (s, s, 3)).copy()
    if kind == "gradient":
        img += (40.0 * yy / s)[..., None] + rng.normal(0, 2, (s, s, 1))
    elif kind == "streaks":
        column = np.repeat(rng.normal(0, 14, (1, s)), s, axis=0)
        img += (column + rng.normal(0, 8, (s, s)))[..., None] * np.array([0.4, 1.0, 0.4])
    elif kind == "speckle":
        img += rng.normal(0, 11, (s, s, 1))
    elif kind == "waves":
        phase = rng.uniform(0, 2 * np.pi)
        img += (22.0 * np.sin(2 * np.pi * yy / 7.0 + 0.6 * np.sin(xx / 9.0) + phase))[..., None]
    elif kind == "bricks":
        row = (yy // 8).astype(np.int64)
        mortar = (yy % 8 == 0) | (((xx + 8 * (row % 2)) % 16) == 0)
        img += rng.normal(0, 6, (s, s, 1))
        img[mortar] = (205, 200, 190)
    elif kind == "asphalt":
        img += rng.normal(0, 9, (s, s, 1))
    elif kind == "flakes":  # bright, bluish shadows in soft blobs
        img += rng.normal(0, 4, (s, s, 1))
        blobs = rng.random((s, s)) < 0.06
        img[blobs] -= (25, 15, 0)
    else:  # cracks: glowing veins on a dark crust
        phases = rng.uniform(0, 2 * np.pi, 2)
        vein = np.abs(np.sin(xx / 5.0 + phases[0]) + np.sin(yy / 4.0 + 0.8 * np.sin(xx / 6.0) + phases[1]))
        glow = np.clip(1.0 - vein / 0.35, 0, 1)[..., None]
        img = img * (1 - glow) + np.array([255.0, 215.0, 60.0]) * glow
    return img


def shape_mask(
    kind: str, cy: float, cx: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """(S, S) bool silhouette of one thing of radius ``r`` centred at (cy, cx), turned by ``angle``."""
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    if kind in ("square", "cross"):
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        if kind == "square":
            return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
        arm = 0.3 * r  # a plus sign: two bars of width 0.6 r
        return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    if kind == "triangle":  # upright, apex at the top, like a cone
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= 0.75 * r * t)
    if kind != "star":
        raise ValueError(f"Unknown shape {kind!r}; choose one of {SHAPES}.")
    theta = np.arctan2(dy, dx) - angle  # star: radius follows a triangle wave with 5 peaks
    frac = (5 * theta / (2 * np.pi)) % 1.0
    return np.hypot(dy, dx) <= r * (0.42 + 0.58 * (1 - 2 * np.abs(frac - 0.5)))


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def paint_thing(
    img: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int],
    shape: str,
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    r: float,
    shade_range: tuple[float, float] = (0.8, 1.1),
    tint: float = 15.0,
) -> None:
    """Paint one instance in its own shade of ``color`` (balls lit from the upper left), dark outline."""
    shade = np.asarray(color, dtype=np.float32) * rng.uniform(*shade_range) + rng.uniform(-tint, tint, 3)
    if shape == "circle":
        light = 1.25 - 0.45 * np.clip(np.hypot(yy - cy + 0.3 * r, xx - cx + 0.3 * r) / (1.3 * r), 0, 1)
        img[mask] = shade * light[mask][:, None]
    else:
        img[mask] = shade
    img[outline(mask)] *= 0.45
