"""``omtseg probe``: does a pretrained BEiT-3 ground the world's words? A check of the trunk alone.

    omtseg probe --backbone weights/beit3_tiny_world.pth [--config configs/pretrain/world_tiny.yaml]
                 [--images 150] [--out outputs/probe/<backbone>.json]

Zero-shot segmentation of a novel concept needs two things of the frozen trunk: that it reads the concept
from pixels, and that a name's text feature lands where that reading lands. This probe measures both at once,
before any segmentation training (which takes minutes per seed and varies by several PQ points from seed to
seed). On the held-out images of the pre-training corpus (the config's ``val_images``), for every caption
word that names a colour, a shape or a stuff of the world:

1. the word is replaced by ``<mask>`` and the caption is read jointly with the image: the masked token's final
   state is the word *read from the image*;
2. every word of the same kind is read alone, text only (positions 0.., as a per-name prompt entry
   ``word ;``): its state is the word's *text feature*;
3. the reading counts as grounded when, after subtracting the kind's mean text feature from both, the right
   word's text feature is the most cosine-similar one.

Accuracy per kind is printed against chance (1 / words of the kind). The masked-token accuracy of the
pre-training log measures (1) through the pre-training head; this probe needs no head (``--half`` files have
none) and measures (1) and (2) together, in the space the segmenter's class features live in.

A trunk pretrained with image-text contrast (VLMo's, ``itc_weight``) grounds words in another place: the
image read alone and a name read alone. The second reading, :func:`contrast_probe`, scores each word of a
kind by the cosine of its text-only state (``<s> word </s>``, mean of its word states) to the image-only state
(mean of the patch states), the embeddings the contrast trains, and reports per kind the AUC of a word the
caption names over a word of the same kind it does not name (chance 0.5). A masked-modeling trunk grounds in
the first reading and not the second; the contrast trunk the other way round (README "Limits").
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omtseg.data.world import COLORS, SHAPES, STUFF
from omtseg.io import save_json
from omtseg.lit_pretrain import PIXEL_MEAN, PIXEL_STD
from omtseg.modeling.backbone.beit3 import BEiT3, load_beit3_checkpoint
from omtseg.modeling.pretraining import image_embedding, text_embedding
from omtseg.modeling.prompts import ENTRY_SEPARATOR
from omtseg.modeling.tokenizer import BOS_ID, EOS_ID, MASK_ID, Beit3Tokenizer


def world_word_kinds() -> dict[str, list[str]]:
    """The world's words by kind: colours, shapes, and the first word of each stuff name."""
    return {"colour": list(COLORS), "shape": list(SHAPES), "stuff": [name.split()[0] for name in STUFF]}


@dataclass(frozen=True)
class GroundingResult:
    """Per word: occurrences and grounded readings; kinds as given."""

    kinds: dict[str, list[str]]
    count: dict[str, int]
    correct: dict[str, int]
    chance_level: float | None = None  # None: one right word among the kind's (1 / words)

    def accuracy(self, kind: str) -> float:
        n = sum(self.count[w] for w in self.kinds[kind])
        return sum(self.correct[w] for w in self.kinds[kind]) / n if n else float("nan")

    def chance(self, kind: str) -> float:
        return self.chance_level if self.chance_level is not None else 1 / len(self.kinds[kind])

    def as_dict(self) -> dict[str, Any]:
        return {
            kind: {
                "n": sum(self.count[w] for w in words),
                "accuracy": round(self.accuracy(kind), 4),
                "chance": round(self.chance(kind), 4),
                "words": {w: {"n": self.count[w], "accuracy": round(self.correct[w] / self.count[w], 4)}
                          for w in words if self.count[w]},  # fmt: skip
            }
            for kind, words in self.kinds.items()
        }

    def table(self) -> str:
        lines = [f"{'kind':8s} {'n':>5s} {'grounded':>9s} {'chance':>7s}  per word"]
        for kind, row in self.as_dict().items():
            words = ", ".join(f"{w} {v['accuracy']:.2f}" for w, v in row["words"].items())
            lines.append(f"{kind:8s} {row['n']:5d} {row['accuracy']:9.2f} {row['chance']:7.2f}  {words}")
        return "\n".join(lines)


@torch.no_grad()
def grounding_probe(
    backbone: BEiT3,
    samples: Iterable[tuple[Tensor, str]],
    kinds: Mapping[str, Sequence[str]],
    tokenizer: Beit3Tokenizer | None = None,
) -> GroundingResult:
    """Run the probe (module doc) over ``samples``: (3, H, W) uint8 images with one caption each.

    Raises:
        ValueError: a word of ``kinds`` is not one token (the probe masks single tokens).
    """
    tokenizer = tokenizer or Beit3Tokenizer()
    backbone = backbone.eval()
    token = _single_tokens(kinds, tokenizer)
    kind_of = {w: kind for kind, words in kinds.items() for w in words}
    word_of = {i: w for w, i in token.items()}
    separator = tokenizer.encode(ENTRY_SEPARATOR)[-1]
    text = {w: _text_feature(backbone, token[w], separator) for w in token}
    centre = {kind: torch.stack([text[w] for w in words]).mean(0) for kind, words in kinds.items()}
    table = {kind: F.normalize(torch.stack([text[w] for w in words]) - centre[kind], dim=-1)
             for kind, words in kinds.items()}  # fmt: skip
    count: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for image, caption in samples:
        ids = [BOS_ID, *tokenizer.encode(caption), EOS_ID]
        where = [p for p, i in enumerate(ids) if i in word_of]
        if not where:
            continue
        batch = torch.tensor(ids).repeat(len(where), 1)
        batch[torch.arange(len(where)), torch.tensor(where)] = MASK_ID  # one masked word per row
        pixels = ((image.float() - PIXEL_MEAN) / PIXEL_STD)[None].expand(len(where), -1, -1, -1)
        states = backbone(image=pixels, text_ids=batch)
        gh, gw = backbone.patch_grid((image.shape[-2], image.shape[-1]))
        vision_len = 1 + gh * gw  # CLS + patches, then the text
        for row, p in enumerate(where):
            w = word_of[ids[p]]
            kind = kind_of[w]
            read = F.normalize(states[row, vision_len + p] - centre[kind], dim=-1)
            count[w] += 1
            correct[w] += int(kinds[kind][int((table[kind] @ read).argmax())] == w)
    every = {k: list(v) for k, v in kinds.items()}
    return GroundingResult(every, {w: count[w] for w in token}, {w: correct[w] for w in token})


@torch.no_grad()
def contrast_probe(
    backbone: BEiT3,
    samples: Iterable[tuple[Tensor, str]],
    kinds: Mapping[str, Sequence[str]],
    tokenizer: Beit3Tokenizer | None = None,
) -> GroundingResult:
    """The contrast reading (module doc) over ``samples``: (3, H, W) uint8 images with one caption each.

    For every word a caption names and every word of the same kind it does not name, the pair counts for the
    named word, and as correct when the named word's text-only state is the more cosine-similar to the image
    read alone. ``accuracy`` is then the AUC of named over unnamed words (chance 0.5); a caption naming all
    or none of a kind's words adds nothing to that kind.

    Raises:
        ValueError: a word of ``kinds`` is not one token (the caption's words are matched token by token).
    """
    tokenizer = tokenizer or Beit3Tokenizer()
    backbone = backbone.eval()
    token = _single_tokens(kinds, tokenizer)
    ids = torch.tensor([[BOS_ID, token[w], EOS_ID] for w in token])  # each word read alone: <s> word </s>
    alone = text_embedding(backbone, ids, torch.zeros_like(ids, dtype=torch.bool))
    text = dict(zip(token, alone, strict=True))
    table = {kind: torch.stack([text[w] for w in words]) for kind, words in kinds.items()}
    count: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for image, caption in samples:
        named = set(tokenizer.encode(caption))
        pixels = ((image.float() - PIXEL_MEAN) / PIXEL_STD)[None]
        seen = image_embedding(backbone, pixels)[0]
        for kind, words in kinds.items():
            score = table[kind] @ seen
            inside = [k for k, w in enumerate(words) if token[w] in named]
            outside = [k for k, w in enumerate(words) if token[w] not in named]
            for k in inside:
                count[words[k]] += len(outside)
                correct[words[k]] += int((score[k] > score[outside]).sum()) if outside else 0
    every = {k: list(v) for k, v in kinds.items()}
    return GroundingResult(every, {w: count[w] for w in token}, {w: correct[w] for w in token}, 0.5)


def _single_tokens(kinds: Mapping[str, Sequence[str]], tokenizer: Beit3Tokenizer) -> dict[str, int]:
    """Each word of ``kinds`` -> its one token id.

    Raises:
        ValueError: a word is not one token (the probes find words in captions token by token).
    """
    token: dict[str, int] = {}
    for words in kinds.values():
        for w in words:
            ids = tokenizer.encode(w)
            if len(ids) != 1:
                raise ValueError(f"Probe word {w!r} is {len(ids)} tokens; the probes read single tokens.")
            token[w] = ids[0]
    return token


def _text_feature(backbone: BEiT3, word: int, separator: int) -> Tensor:
    """(D,) final state of ``word`` read alone as the entry ``word ;`` (positions 0, 1; no image)."""
    states = backbone(text_ids=torch.tensor([[word, separator]]), text_positions=torch.arange(2))
    return states[0, 0]


def _held_out_samples(datamodule: Any, images: int) -> tuple[list[tuple[Tensor, str]], int]:
    """(image, caption) pairs of the first ``images`` held-out images of a caption datamodule, and how many
    images that is (fewer when the corpus holds out fewer)."""
    datamodule.prepare_data()
    datamodule.setup("validate")
    val = datamodule.datasets["val"]
    if not len(val):
        raise ValueError("The corpus holds out no image (val_images: 0); the probe reads held-out images.")
    keep: dict[int, None] = {}
    samples = []
    for k in range(len(val)):
        image, caption, image_id = val[k]
        if image_id not in keep and len(keep) == images:
            continue
        keep[image_id] = None
        samples.append((image, caption))
    return samples, len(keep)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg probe``); returns the exit status."""
    from omtseg.commands.pretrain import build_pretrain_cli

    parser = argparse.ArgumentParser(
        prog="omtseg probe",
        description="Grounding probe of a pretrained BEiT-3 on the world's held-out captioned images.",
    )
    parser.add_argument("--backbone", type=Path, required=True, help="BEiT-3 .pth (from omtseg pretrain)")
    parser.add_argument("--config", type=Path, default=Path("configs/pretrain/world_tiny.yaml"),
                        help="the pre-training config: the trunk's shape and the corpus")  # fmt: skip
    parser.add_argument("--images", type=int, default=150, help="held-out images to read (all captions)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (outputs/probe/<backbone>.json)")
    args, rest = parser.parse_known_args(argv)
    if not args.backbone.is_file():
        raise FileNotFoundError(f"BEiT-3 weights not found: {args.backbone}. Give a `omtseg pretrain` .pth.")
    if not args.config.is_file():
        raise FileNotFoundError(f"Config not found: {args.config}. Give a pre-training config.")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}.")
    cli = build_pretrain_cli(["--config", str(args.config), "--trainer.logger", "false", *rest], run=False)
    backbone = cli.model.model.beit3
    load_beit3_checkpoint(backbone, args.backbone)
    samples, images = _held_out_samples(cli.datamodule, args.images)
    result = grounding_probe(backbone, samples, world_word_kinds())
    contrast = contrast_probe(backbone, samples, world_word_kinds())
    out = args.out or Path("outputs") / "probe" / f"{args.backbone.stem}.json"
    report = {"backbone": str(args.backbone), "images": images, "captions": len(samples),
              "kinds": result.as_dict(), "contrast": contrast.as_dict()}  # fmt: skip
    save_json(report, out, indent=1)
    print("Joint reading (a masked word read with the image, matched to the names read alone):")
    print(result.table())
    print("\nContrast reading (the image alone against the names alone; AUC, named word over unnamed):")
    print(contrast.table())
    print(f"\nGrounded: the word read from the image (masked) is nearest its own name's text feature; in\n"
          f"the contrast reading, a word the caption names is nearer the image than one it does not.\n"
          f"Written to {out}.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
