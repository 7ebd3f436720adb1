"""Caption text generated for segments: weak class-name captions and synthetic scene descriptions.

- Weak supervision from panoptic data (SCA's pre-training on detection class names): every segment captioned
  by a template over its class name, e.g. "a photo of a {name}".
- Synthetic region captions: for the synthetic panoptic dataset, a caption from each segment's geometry and
  class color ("a large red ball above a small purple box"), so captioning can be trained and demonstrated
  without downloads.

:class:`~omtseg.data.regions.PanopticRegionCaptions` pairs these captions with a panoptic dataset's segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from omtseg.types import Targets, Vocabulary

WEAK_TEMPLATE = "a photo of a {name}"
# Named colors for synthetic captions; a class's color family is the nearest entry in RGB.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (235, 210, 40),
    "green": (50, 150, 50),
    "teal": (30, 105, 125),
    "blue": (70, 120, 225),
    "purple": (130, 60, 190),
    "pink": (240, 120, 180),
    "brown": (140, 75, 50),
    "tan": (215, 190, 145),
    "gray": (110, 110, 110),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SMALL_AREA, LARGE_AREA = 0.03, 0.08  # share of the image below / above which a thing is "small" / "large"


def class_name_captions(targets: Targets, vocabulary: Vocabulary, template: str = WEAK_TEMPLATE) -> list[str]:
    """Weak supervision: each segment's class name in ``template`` (which must contain ``{name}``)."""
    check_template(template)
    return [template.format(name=vocabulary.names[i]) for i in targets.labels.tolist()]


def check_template(template: str) -> None:
    if "{name}" not in template:
        raise ValueError(f"Caption template {template!r} lacks '{{name}}'; e.g. {WEAK_TEMPLATE!r}.")


def color_name(rgb: Sequence[int]) -> str:
    """The :data:`PALETTE` name nearest to ``rgb``."""
    return min(PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(PALETTE[n], rgb, strict=True)))


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def synthetic_region_captions(targets: Targets, vocabulary: Vocabulary) -> list[str]:
    """Captions of a synthetic panoptic sample's segments from their geometry and class colors.

    A thing: size (area under 3% / over 8% of the image: "small" / "large"), its class color family and name,
    and where it lies relative to the nearest other thing ("a large red ball above a small purple box"); a
    lone thing is placed in front of the stuff around it. Stuff: color, name and vertical position ("blue sky
    at the top"). Meant for vocabularies whose colors describe the classes (the synthetic one).

    Args:
        targets: the sample's segments (after any transform, so flips swap left and right).
        vocabulary: the classes ``targets.labels`` index.

    Returns:
        One caption per segment, in the order of ``targets.labels``.
    """
    masks = targets.masks
    n, (h, w) = masks.shape[0], masks.shape[-2:]
    if n == 0:
        return []
    labels = targets.labels.tolist()
    ys = torch.arange(h, dtype=torch.float32)[None, :, None]
    xs = torch.arange(w, dtype=torch.float32)[None, None, :]
    area = masks.flatten(1).sum(1).clamp(min=1).float()  # (N,)
    cy = (masks * ys).flatten(1).sum(1) / area  # (N,)
    cx = (masks * xs).flatten(1).sum(1) / area

    def noun(i: int) -> str:
        name = vocabulary.names[labels[i]]
        # A name that already says its colour ("red ball" in the open-vocabulary world) is not coloured twice.
        said = any(word in PALETTE for word in name.split())
        words = [name] if said else [color_name(vocabulary.colors[labels[i]]), name]
        share = float(area[i]) / (h * w)
        if targets.is_thing[i] and share < SMALL_AREA:
            words.insert(0, "small")
        elif targets.is_thing[i] and share > LARGE_AREA:
            words.insert(0, "large")
        return " ".join(words)

    things = [i for i in range(n) if targets.is_thing[i]]
    # Dilating by a few pixels finds the stuff a lone thing touches.
    near = F.max_pool2d(masks[:, None].float(), kernel_size=7, stride=1, padding=3)[:, 0] > 0  # (N, H, W)
    captions = []
    for i in range(n):
        if not targets.is_thing[i]:
            third = ("at the top", "in the middle", "at the bottom")[min(2, int(3 * float(cy[i]) / h))]
            captions.append(f"{noun(i)} {third}")
            continue
        others = [j for j in things if j != i]
        if others:
            j = min(others, key=lambda k: float((cy[k] - cy[i]) ** 2 + (cx[k] - cx[i]) ** 2))
            dy, dx = float(cy[i] - cy[j]), float(cx[i] - cx[j])
            if abs(dy) >= abs(dx):
                relation = "above" if dy < 0 else "below"
            else:
                relation = "left of" if dx < 0 else "right of"
            captions.append(f"{_article(noun(i))} {relation} {_article(noun(j))}")
            continue
        ring = near[i] & ~masks[i]
        stuff = [j for j in range(n) if not targets.is_thing[j]]
        touching = max(stuff, key=lambda j: int((masks[j] & ring).sum()), default=None)
        suffix = f" in front of the {vocabulary.names[labels[touching]]}" if touching is not None else ""
        captions.append(_article(noun(i)) + suffix)
    return captions


def synthetic_caption_words(vocabulary: Vocabulary) -> list[str]:
    """Every word :func:`synthetic_region_captions` and :func:`class_name_captions` can write (a closed
    vocabulary for a tiny word-level language model)."""
    fixed = "a an small large above below left right of in front the at top middle bottom photo".split()
    names = [w for name in vocabulary.names for w in name.split()]
    colors = [w for c in PALETTE for w in c.split()]
    return list(dict.fromkeys(fixed + colors + names))
