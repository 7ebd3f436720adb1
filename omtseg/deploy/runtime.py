"""Run an exported segmenter with ONNX Runtime, post-processed by the same code as the PyTorch path.

:class:`OnnxSegmenter` reads the file's metadata (:mod:`omtseg.deploy.export`), turns each vocabulary into the
graph's text inputs (:func:`~omtseg.deploy.graph.graph_text_inputs`, cached), pads a batch to the graph's
fixed image size and hands the raw outputs to :func:`omtseg.modeling.postprocess.batch_results`, so results
are those of :meth:`OMTSeg.predict <omtseg.modeling.segmenter.OMTSeg.predict>` for the same padded input.
:meth:`omtseg.Segmenter.from_onnx` wraps it in the Python API.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from omtseg.deploy.export import DYNAMIC_SIZE_UNSUPPORTED, METADATA_PREFIX, vocabulary_json
from omtseg.deploy.graph import OUTPUTS, graph_text_inputs
from omtseg.modeling.postprocess import TASKS, batch_results
from omtseg.modeling.segmenter import seen_class_offsets
from omtseg.types import Batch, ImageResult, Vocabulary

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxSegmenter:
    """An exported segmenter in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file written by ``omtseg export``.
        device: ``"cpu"`` (CPU provider) or ``"cuda"`` / ``"cuda:N"`` (CUDA provider, CPU for what it lacks).
        threads: ONNX Runtime intra-op threads; None lets it use every core.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an omtseg export, or a device whose provider this onnxruntime lacks.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No ONNX file at {path}; write one with `omtseg export`.")
        kind, _, index = device.partition(":")
        if kind not in PROVIDERS:
            raise ValueError(f"device={device!r}: ONNX models run on 'cpu' or 'cuda[:N]'.")
        available = ort.get_available_providers()
        if PROVIDERS[kind] not in available:
            raise ValueError(
                f"device={device!r} needs ONNX Runtime's {PROVIDERS[kind]}, which this install lacks "
                f"(it has {available}); install onnxruntime-gpu, or use device='cpu'."
            )
        providers: list[Any] = [PROVIDERS["cpu"]]
        if kind == "cuda":
            providers.insert(0, (PROVIDERS["cuda"], {"device_id": int(index or 0)}))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        meta = {
            k[len(METADATA_PREFIX) :]: v
            for k, v in self.session.get_modelmeta().custom_metadata_map.items()
            if k.startswith(METADATA_PREFIX)
        }
        if meta.get("format") != "1":
            raise ValueError(f"{path} has no omtseg metadata; write the file with `omtseg export`.")
        h, w = (int(v) for v in meta["image_size"].split(","))
        self.image_hw = (h, w)
        self.text_attention = meta["text_attention"]
        self.max_text_tokens = int(meta["max_text_tokens"])
        self.text_stored = meta["text_stored"] == "true"
        self.object_threshold = float(meta["object_threshold"])
        self.overlap_threshold = float(meta["overlap_threshold"])
        self.instance_top_k = int(meta["instance_top_k"])
        self.seen_class_penalty = float(meta.get("seen_class_penalty", "0.0"))  # older files: none
        self.trained_names = frozenset(json.loads(meta.get("trained_names", "[]")))
        self.export_vocabulary = json.loads(meta["vocabulary"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._text: OrderedDict[Vocabulary, dict[str, np.ndarray]] = OrderedDict()

    def text_inputs(self, vocabulary: Vocabulary) -> dict[str, np.ndarray]:
        """The graph's text inputs for ``vocabulary`` (none for a graph with stored text features).

        Raises:
            ValueError: a stored-text graph asked for another vocabulary than its export's, or a vocabulary
                too long for one prompt chunk.
        """
        if self.text_stored:
            if json.loads(vocabulary_json(vocabulary)) != self.export_vocabulary:
                raise ValueError(
                    f"{self.path} stores the text features of its export's classes "
                    f"{self.export_vocabulary['names']} (a model that encodes text apart from the image); "
                    "segment with those classes, or export again with yours."
                )
            return {}
        inputs = self._text.get(vocabulary)
        if inputs is None:
            all_inputs = graph_text_inputs(
                vocabulary, text_attention=self.text_attention, max_text_tokens=self.max_text_tokens
            )
            inputs = {n: all_inputs[n] for n in self.input_names if n != "images"}
        self._text[vocabulary] = inputs
        self._text.move_to_end(vocabulary)
        while len(self._text) > 16:
            self._text.popitem(last=False)
        return inputs

    def pad(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, h, w) -> (B, 3, H, W) float32 with black padding at the bottom and right (the graph's size).

        Raises:
            ValueError: an image larger than the graph's size.
        """
        h, w = images.shape[-2:]
        gh, gw = self.image_hw
        if h > gh or w > gw:
            raise ValueError(
                f"Images of {h}x{w} pixels (after resizing and padding to 32) do not fit {self.path}, "
                f"exported for {gh}x{gw}: segment at an image size of at most {min(gh, gw)} (--image-size), "
                f"or export again with --image-size {h} {w}. {DYNAMIC_SIZE_UNSUPPORTED}"
            )
        out = np.zeros((images.shape[0], 3, gh, gw), dtype=np.float32)
        out[:, :, :h, :w] = images
        return out

    def run(self, images: np.ndarray, vocabulary: Vocabulary) -> dict[str, np.ndarray]:
        """Raw outputs (:data:`~omtseg.deploy.graph.OUTPUTS`) of (B, 3, h, w) 0-255 images no larger than
        the graph's size."""
        feed = {"images": self.pad(images), **self.text_inputs(vocabulary)}
        return dict(zip(OUTPUTS, self.session.run(list(OUTPUTS), feed), strict=True))

    def predict(
        self,
        batch: Batch,
        tasks: Sequence[str] = TASKS,
        *,
        object_threshold: float | None = None,
        overlap_threshold: float | None = None,
        top_k: int | None = None,
        seen_class_penalty: float | None = None,
    ) -> tuple[list[ImageResult], Tensor, Tensor]:
        """Post-processed results at each image's original size, as :meth:`OMTSeg.predict` gives them.

        Returns:
            The results, the final query embeddings (B, Q, C) and the mask logits (B, Q, H/4, W/4) over the
            graph's canvas.
        """
        raw = self.run(batch.images.cpu().numpy(), batch.vocabulary)
        out = {k: torch.from_numpy(v) for k, v in raw.items()}
        class_logits = out["class_logits"]
        penalty = self.seen_class_penalty if seen_class_penalty is None else seen_class_penalty
        if penalty and not self.trained_names:
            raise ValueError(
                f"seen_class_penalty={penalty:g} lowers the classes the model was trained on, but "
                f"{self.path} records none; export it again from a checkpoint that does (omtseg fit keeps "
                "them)."
            )
        offsets = seen_class_offsets(batch.vocabulary, self.trained_names, penalty)
        if offsets is not None:
            class_logits = class_logits - offsets.to(class_logits)
        results = batch_results(
            class_logits,
            out["objectness_logits"],
            out["mask_logits"],
            infos=batch.infos,
            canvas_hw=self.image_hw,
            is_thing=batch.vocabulary.is_thing,
            tasks=tasks,
            object_threshold=self.object_threshold if object_threshold is None else object_threshold,
            overlap_threshold=self.overlap_threshold if overlap_threshold is None else overlap_threshold,
            top_k=self.instance_top_k if top_k is None else top_k,
        )
        return results, out["queries"], out["mask_logits"]
