"""``omtseg export``: the whole segmenter as one ONNX file, for ONNX Runtime (``omtseg segment --onnx``).

    omtseg export --ckpt model.ckpt --classes cat dog "stuff: sky" --out model.onnx --image-size 640 640
    omtseg export --ckpt model.ckpt --vocabulary classes.txt --out model.onnx --image-size 640 640

BEiT-3, the adapter, the ``<WLS>`` prompts, the pixel decoder and the transformer decoder are one graph (ONNX
opset 17). With the paper's joint image-text pass the tokenised vocabulary is a graph input, so the file
serves any vocabulary (:func:`omtseg.deploy.graph.graph_text_inputs` makes the inputs; the classes given here
are the example it is traced and checked with). A model that encodes text apart from the image
(``cross_modal=False``) stores the text features of the classes given, and serves those only.

The image size is fixed (``--image-size H W``, multiples of 32; images are padded to it); ``--dynamic`` is
refused with the reason (:data:`omtseg.deploy.export.DYNAMIC_SIZE_UNSUPPORTED`). The batch size and the
vocabulary are dynamic. The file is checked with ``onnx.checker`` and run once with ONNX Runtime against
PyTorch; the largest difference per output is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from omtseg.api import Segmenter
from omtseg.data.vocabulary import parse_class_list, read_class_list
from omtseg.deploy.export import DYNAMIC_SIZE_UNSUPPORTED, OPSET, export_onnx


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``omtseg export``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="omtseg export",
        description="Export a segmenter checkpoint to one ONNX file (run it with `omtseg segment --onnx`).",
    )
    parser.add_argument("--ckpt", required=True, help="segmenter checkpoint written by `omtseg fit`")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument(
        "--classes", nargs="+", help='one argument per class: cat dog "tv, monitor" (synonyms) "stuff: sky"'
    )
    names.add_argument("--vocabulary", help="text file, one class per line (as --classes)")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"),
        help="the graph's image size in pixels, multiples of 32 (images are padded to it)",
    )
    size.add_argument("--dynamic", action="store_true", help="any image size: not supported, says why")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)

    if args.dynamic:
        raise ValueError(f"--dynamic is not supported. {DYNAMIC_SIZE_UNSUPPORTED}")
    if args.vocabulary is not None:
        things, stuff = read_class_list(args.vocabulary)
        classes = [*things, *(f"stuff: {s}" for s in stuff)]
    else:
        classes = list(args.classes)
        parse_class_list(classes, source="--classes")
    segmenter = Segmenter.from_checkpoint(args.ckpt, device="cpu")
    report = export_onnx(
        segmenter.model,
        args.out,
        vocabulary=segmenter.vocabulary(classes),
        image_hw=tuple(args.image_size),
        opset=args.opset,
    )
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_diff.items())
    inputs = ", ".join(report.input_names)
    print(
        f"Wrote {report.path} ({report.file_bytes / 2**20:.1f} MiB, opset {report.opset}, "
        f"{report.image_hw[0]}x{report.image_hw[1]} images, exported in {report.seconds:.1f} s); "
        f"inputs: {inputs}. onnx.checker passed; ONNX Runtime vs PyTorch max abs difference: {diffs}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
