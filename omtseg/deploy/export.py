"""Export a trained segmenter to one ONNX file, checked, with what a runtime needs in its metadata.

The graph is :class:`~omtseg.deploy.graph.SegmenterGraph`, exported by PyTorch's TorchScript-based ONNX
exporter at opset :data:`OPSET` (17: LayerNormalization is one op). Dynamic axes: the batch and the
vocabulary (text tokens L, prompt entries P, classes K). The image size is fixed at export: the BEiT-3
position table resampling and the deformable-attention level sizes are computed from the image size in
Python, which the exporter records as constants (see :data:`DYNAMIC_SIZE_UNSUPPORTED`); images are padded
to that size, so export at the size you segment at (``--image-size`` of ``omtseg segment``, padded to a
multiple of 32).

Metadata (``metadata_props``, under :data:`METADATA_PREFIX`): the prompt layout and chunk size the text inputs
are made with, the image size, the panoptic and instance thresholds of the checkpoint, whether the text
features are stored in the graph, and the export's vocabulary (the one a stored-text graph accepts).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omtseg.deploy.graph import OUTPUTS, SegmenterGraph
from omtseg.modeling.frozen_trunk import SIZE_DIVISOR
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Vocabulary

OPSET = 17
METADATA_PREFIX = "omtseg."
DYNAMIC_SIZE_UNSUPPORTED = (
    "Exported graphs have a fixed image size: the BEiT-3 position table resampling and the deformable-"
    "attention level sizes are computed from the image size in Python, which the exporter records as "
    "constants. Export one file per size with --image-size H W (images are padded to it; the batch and the "
    "vocabulary stay dynamic)."
)
_DYNAMIC_AXES = {
    "images": {0: "batch"},
    "text_ids": {0: "text_tokens"},
    "text_positions": {0: "text_tokens"},
    "text_entry": {0: "text_tokens"},
    "wls_index": {0: "prompt_entries"},
    "class_members": {0: "prompt_entries", 1: "classes"},
    "class_logits": {0: "batch", 2: "classes"},
    "objectness_logits": {0: "batch"},
    "mask_logits": {0: "batch"},
    "queries": {0: "batch"},
}


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ONNX file.
        seconds: wall time of the export (tracing, conversion, writing), without the checks.
        file_bytes: size of the file (and of its external data file, when the model needed one).
        opset: the ONNX opset.
        image_hw: the fixed (H, W) of the image input.
        input_names: the graph inputs, in order.
        max_abs_diff: per output, max |ONNX Runtime - PyTorch| on the export's vocabulary and a random image.
    """

    path: Path
    seconds: float
    file_bytes: int
    opset: int
    image_hw: tuple[int, int]
    input_names: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def vocabulary_json(vocabulary: Vocabulary) -> str:
    """The parts of a vocabulary that results depend on, as JSON (names, synonyms, thing flags)."""
    return json.dumps(
        {"names": vocabulary.names, "synonyms": vocabulary.synonyms, "is_thing": vocabulary.is_thing}
    )


def export_onnx(
    model: OMTSeg,
    path: str | os.PathLike[str],
    *,
    vocabulary: Vocabulary,
    image_hw: tuple[int, int],
    opset: int = OPSET,
    verify: bool = True,
) -> ExportReport:
    """Export ``model`` to ``path`` and check the file.

    Args:
        model: the trained segmenter (on the CPU; put in eval mode).
        path: the ``.onnx`` file to write (its folder is created).
        vocabulary: the vocabulary traced with; stored in the graph as text features when the model
            encodes text apart from the image (``cross_modal=False``), else one example of the text inputs.
        image_hw: the fixed (H, W) of the image input, positive multiples of 32.
        opset: the ONNX opset.
        verify: run the file once with ONNX Runtime and compare every output with PyTorch.

    Raises:
        ValueError: an image size that is not a positive multiple of 32, or a vocabulary too long for one
            prompt chunk.
    """
    import onnx  # here, not at the top: the runtime reads this module's constants without it (0.25 s)

    h, w = image_hw
    if h <= 0 or w <= 0 or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ValueError(
            f"--image-size {h} {w}: the graph's image size must be positive multiples of {SIZE_DIVISOR} "
            f"(the model pads to them), e.g. {h + -h % SIZE_DIVISOR} {w + -w % SIZE_DIVISOR}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    graph = SegmenterGraph(model, vocabulary)
    # A batch of two makes the exporter keep the batch size symbolic wherever the code compares it with 1.
    single = graph.example_inputs(vocabulary, (h, w))
    inputs = (torch.cat([single[0], single[0].flip(-1)]), *single[1:])
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        # Python-side size checks and shape arithmetic are recorded as constants: that is what fixes the
        # image size, and it is checked below and at run time.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=graph.input_names,
            output_names=list(OUTPUTS),
            dynamic_axes={k: v for k, v in _DYNAMIC_AXES.items() if k in (*graph.input_names, *OUTPUTS)},
        )
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path), load_external_data=False)
    metadata = {
        "format": "1",
        "image_size": f"{h},{w}",
        "text_attention": model.text_attention,
        "max_text_tokens": str(model.prompts.max_text_tokens),
        "text_stored": str(not model.cross_modal).lower(),
        "object_threshold": repr(model.object_threshold),
        "overlap_threshold": repr(model.overlap_threshold),
        "instance_top_k": str(model.instance_top_k),
        "seen_class_penalty": repr(model.seen_class_penalty),
        "trained_names": json.dumps(sorted(model.trained_names)),
        "vocabulary": vocabulary_json(vocabulary),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    # A model over 2 GB keeps its weights in files beside the graph, named after it.
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    report = ExportReport(
        path=path, seconds=seconds, file_bytes=size, opset=opset, image_hw=(h, w),
        input_names=list(graph.input_names),
    )
    if verify:
        report.max_abs_diff = _compare(graph, path, single)
    return report


def _compare(graph: SegmenterGraph, path: Path, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of every output on ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUTS), {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)})
    with torch.no_grad():
        want = graph(*inputs)
    return {
        name: float(np.abs(a - b.numpy()).max()) for name, a, b in zip(OUTPUTS, got, want, strict=True)
    }
