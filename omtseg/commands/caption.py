"""``omtseg caption``: caption the regions of an image given as boxes, points or masks, or every segment.

    omtseg caption photo.jpg --ckpt model.ckpt --captioner captioner.ckpt --boxes 10,20,200,180 --points 50,60
    omtseg caption photo.jpg --ckpt model.ckpt --captioner captioner.ckpt --masks dog.png --classes cat dog
    omtseg caption photo.jpg --ckpt model.ckpt --captioner captioner.ckpt          # everything: every segment

All prompts share one segmenter pass (:meth:`omtseg.api.Segmenter.caption`). A box or point that no predicted
segment stands for is still captioned, as its own region (see :mod:`omtseg.captioning.prompts`). Writes into
``--out``:

    <name>.captions.json   the image's size and one entry per region, in prompt order (boxes, points, masks):
                           prompt, value, caption, source, segment_id, area, bbox [x, y, w, h]
    <name>.overlay.png     the image with each region colored, its prompt drawn, its number and caption

and prints one line per caption. Coordinates are pixels of the image file as stored upright.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omtseg.api import Segmenter
from omtseg.data.vocabulary import parse_class_list, read_class_list
from omtseg.io import read_checked, read_image, save_image, save_json


def _numbers(text: str, count: int, what: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        example = "x0,y0,x1,y1 (e.g. 10,20,200,180)" if count == 4 else "x,y (e.g. 50,60)"
        raise ValueError(f"{what} {text!r} must be {example}: {count} comma-separated numbers, in pixels.")
    return values


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask file as (H, W) bool (any non-zero pixel is in the region), checked against the image size."""
    mask = read_image(path, mode="L", exif=False) > 0
    if mask.shape != size:
        raise ValueError(
            f"Mask {path} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}; "
            "give a mask of the image's size."
        )
    if not mask.any():
        raise ValueError(f"Mask {path} is empty (all zero); mark the region with non-zero pixels.")
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg caption``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="omtseg caption",
        description="Caption the regions of an image given as boxes, points or masks (all in one segmenter "
        "pass), or every segment when none is given; writes JSON and an overlay into --out.",
    )
    parser.add_argument("image", help="the image file")
    parser.add_argument("--ckpt", required=True, help="segmenter checkpoint written by `omtseg fit`")
    parser.add_argument("--captioner", required=True, help="captioner checkpoint for that segmenter")
    parser.add_argument("--boxes", nargs="+", default=[], metavar="X0,Y0,X1,Y1", help="box prompts, pixels")
    parser.add_argument("--points", nargs="+", default=[], metavar="X,Y", help="point prompts, pixels")
    parser.add_argument("--masks", nargs="+", default=[], metavar="MASK.png", help="region masks (non-zero)")
    names = parser.add_mutually_exclusive_group()
    names.add_argument(
        "--classes", nargs="+", help='classes to segment with: cat dog "tv, monitor" "stuff: sky" '
        "(default: the 133 COCO panoptic classes)",
    )  # fmt: skip
    names.add_argument("--vocabulary", help="text file, one class per line (as --classes)")
    parser.add_argument("--out", type=Path, default=Path("captions"), help="output folder (captions/)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument(
        "--image-size", type=int, default=640,
        help="long side the image is resized to, pixels (the training data config's eval_size; default 640)",
    )  # fmt: skip
    parser.add_argument("--min-iou", type=float, default=0.5, help="IoU a segment needs to stand for a box")
    parser.add_argument("--max-tokens", type=int, default=20, help="caption length limit in tokens")
    args = parser.parse_args(argv)

    boxes = [_numbers(b, 4, "Box") for b in args.boxes]
    points = [_numbers(p, 2, "Point") for p in args.points]
    classes: list[str] | None = None
    if args.vocabulary is not None:
        things, stuff = read_class_list(args.vocabulary)
        classes = [*things, *(f"stuff: {s}" for s in stuff)]
    elif args.classes is not None:
        classes = list(args.classes)
        parse_class_list(classes, source="--classes")
    image = read_checked(args.image)
    masks = np.stack([read_mask(m, image.shape[:2]) for m in args.masks]) if args.masks else None
    segmenter = Segmenter.from_checkpoint(
        args.ckpt, device=args.device, captioner=args.captioner, image_size=args.image_size,
        caption_max_tokens=args.max_tokens,
    )  # fmt: skip
    name = Path(args.image).name
    result = segmenter.caption(
        image, classes, boxes=boxes, points=points, masks=masks, min_iou=args.min_iou, name=name
    )
    stem = Path(name).stem
    json_path, overlay_path = args.out / f"{stem}.captions.json", args.out / f"{stem}.overlay.png"
    record = result.to_json()
    for entry, mask_file in zip(record["regions"][len(boxes) + len(points) :], args.masks, strict=False):
        entry["mask_file"] = mask_file
    save_json(record, json_path, indent=1)
    save_image(np.asarray(result.overlay()), overlay_path)
    for i, region in enumerate(result.regions, start=1):
        print(f"{i}. {region.prompt} {region.value} ({region.source}): {region.caption}")
    print(f"{len(result.regions)} captions: {json_path}, {overlay_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
