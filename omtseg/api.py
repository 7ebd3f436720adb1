"""``Segmenter``: segment images with your own classes in one call, the Python face of omtseg.

    from omtseg import Segmenter
    seg = Segmenter.from_checkpoint("model.ckpt", device="cpu")
    result = seg("photo.jpg", classes=["cat", "dog", "tv, monitor", "stuff: sky"])

Classes are written as in vocabulary files (:func:`omtseg.data.vocabulary.parse_class_list`): one entry per
class, ``"tv, monitor"`` one class with two names, ``"stuff: sky"`` a stuff class. They are prompted things
first, then stuff, as ``omtseg predict`` prompts a vocabulary file, so the three give identical results for
the same checkpoint, images and classes. Images go through the evaluation transform (long side resized to
``image_size``, padded to a multiple of 32) and results come back at each image's own size.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import SegmenterPass, SegmenterTap, caption_segments
from omtseg.captioning.prompts import RegionCaption, caption_prompts
from omtseg.checkpoint import check_checkpoint, checkpoint_eval_size, load_captioner
from omtseg.data.collate import collate
from omtseg.data.transforms import EvalTransform
from omtseg.data.vocabulary import class_list_vocabulary, parse_class_list, read_categories_json
from omtseg.deploy.runtime import OnnxSegmenter
from omtseg.evaluation.export import panoptic_annotation
from omtseg.io import read_image
from omtseg.lit_module import OMTSegModule
from omtseg.modeling.frozen_trunk import SIZE_DIVISOR
from omtseg.modeling.postprocess import TASKS, OutputMasks, segment_query_ious
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, ImageResult, Sample, Vocabulary
from omtseg.visualize import overlay_regions, overlay_result

COCO_CATEGORIES = Path(str(resources.files("omtseg"))) / "assets/coco_sample/panoptic_coco_categories.json"
"""The COCO panoptic categories (133 classes): the default classes of :meth:`Segmenter.caption`."""

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray | Tensor"
"""A path, a PIL image, an (H, W, 3) / (H, W) array or a (3, H, W) tensor: uint8 0-255, or float 0-1."""


def image_array(image: Any) -> np.ndarray:
    """Any :data:`ImageLike` as (H, W, 3) uint8 RGB.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable file, or an array of another shape or value range.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"Cannot segment a {type(image).__name__}; give a path, a PIL image, an (H, W, 3) array or a "
            "(3, H, W) tensor."
        )
    array = image[..., None] if image.ndim == 2 else image
    if array.ndim != 3 or array.shape[2] not in (1, 3) or 0 in array.shape:
        raise ValueError(f"Expected an (H, W, 3) or (H, W) image, got shape {image.shape}.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"Image values must be uint8 (0-255) or float in [0, 1]; got {array.dtype} in "
                f"[{array.min()}, {array.max()}]."
            )
        array = (array * 255).round().astype(np.uint8)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


@dataclass
class SegmentationResult:
    """One image's segmentation at the image's own size (H, W).

    Attributes:
        image: (H, W, 3) uint8, the image segmented.
        vocabulary: the classes, in prompt order (things, then stuff); ``label`` k is ``vocabulary.names[k]``.
        raw: the post-processed tensors (:class:`~omtseg.types.ImageResult`, on the CPU).
        embeddings: (S, C) float32, per segment of :attr:`segments` (same order), the decoder's final query
            embedding of the query whose mask overlaps the segment most (IoU).
    """

    image: np.ndarray
    vocabulary: Vocabulary
    raw: ImageResult
    embeddings: np.ndarray

    @property
    def info(self) -> ImageInfo:
        """The image's name and sizes."""
        return self.raw.info

    @property
    def panoptic(self) -> np.ndarray:
        """(H, W) int32 segment ids (the ``id`` of :attr:`segments`), 0 where no segment."""
        _computed(self.raw.panoptic, "panoptic")
        assert self.raw.panoptic is not None
        return self.raw.panoptic.id_map.cpu().numpy().astype(np.int32)

    @property
    def semantic(self) -> np.ndarray:
        """(H, W) int64 per-pixel class index into :attr:`vocabulary` (the best-scoring class)."""
        _computed(self.raw.semantic, "semantic")
        assert self.raw.semantic is not None
        return self.raw.semantic.labels.cpu().numpy().astype(np.int64)

    @property
    def instances(self) -> list[dict[str, Any]]:
        """Thing instances, best first: ``{"category", "score", "mask" (H, W) bool}``."""
        _computed(self.raw.instances, "instance")
        assert self.raw.instances is not None
        inst = self.raw.instances
        return [
            {"category": self.vocabulary.names[int(label)], "score": float(score), "mask": mask.cpu().numpy()}
            for mask, label, score in zip(inst.masks, inst.labels, inst.scores, strict=True)
        ]

    @property
    def segments(self) -> list[dict[str, Any]]:
        """The panoptic segments: ``{"id", "category", "category_id", "score", "area", "bbox" [x, y, w, h],
        "isthing"}``, plus ``"caption"`` when a captioner described them."""
        record, _ = self.to_coco()
        assert self.raw.panoptic is not None
        out = []
        for seg, entry in zip(self.raw.panoptic.segments, record["segments_info"], strict=True):
            item = {
                "id": seg.id,
                "category": self.vocabulary.names[seg.label],
                "category_id": entry["category_id"],
                "score": round(float(seg.score), 6),
                "area": entry["area"],
                "bbox": entry["bbox"],
                "isthing": bool(seg.is_thing),
            }
            if seg.caption is not None:
                item["caption"] = seg.caption
            out.append(item)
        return out

    def overlay(self, *, alpha: float = 0.55, min_side: int = 0) -> Image.Image:
        """The image with its segments colored and named (and captioned).

        Args:
            alpha: color opacity.
            min_side: enlarge small images (whole factors) until their short side has this many pixels.
        """
        picture = overlay_result(self.image, self.raw, self.vocabulary, alpha=alpha, min_side=min_side)
        return Image.fromarray(picture)

    def to_coco(self) -> tuple[dict[str, Any], Image.Image]:
        """The COCO panoptic ``annotations`` record (``image_id``, ``file_name``, ``segments_info``) and its
        PNG (ids as R + 256 G + 256^2 B), as ``panoptic.json`` and ``panoptic/`` of ``omtseg predict``."""
        _computed(self.raw.panoptic, "panoptic")
        assert self.raw.panoptic is not None
        record, png = panoptic_annotation(self.raw.info, self.raw.panoptic, self.vocabulary)
        return record, Image.fromarray(png)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: the image's name and size, and its segments."""
        h, w = self.info.orig_size
        return {"image_id": self.info.image_id, "file_name": self.info.file_name, "height": h, "width": w,
                "segments": self.segments}


class Segmenter:
    """A trained OMTSeg ready to segment images with any classes.

    Args:
        model: the segmenter (set to eval mode; moved to ``device``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        captioner: a captioner for this segmenter; segments are then captioned and :meth:`caption` works.
        image_size: long side images are resized to before segmenting (the data config's ``eval_size``:
            640 for COCO-trained models, 64 for the demo's tiny model); None keeps each image's size.
        batch_size: images per forward pass when a list is segmented.
        caption_max_tokens: caption length limit in tokens.
    """

    def __init__(
        self,
        model: OMTSeg,
        *,
        device: str | torch.device = "cpu",
        captioner: SegmentCaptioner | None = None,
        image_size: int | None = 640,
        batch_size: int = 8,
        caption_max_tokens: int = 20,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.captioner = None if captioner is None else captioner.to(self.device).eval()
        self.transform = EvalTransform(size=image_size, size_divisibility=SIZE_DIVISOR)
        self.batch_size = batch_size
        self.caption_max_tokens = caption_max_tokens
        self._vocabularies: OrderedDict[tuple[str, ...], Vocabulary] = OrderedDict()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        captioner: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Segmenter:
        """Load a ``.ckpt`` written by ``omtseg fit`` (its saved config rebuilds the model).

        Args:
            path: the segmenter checkpoint.
            device: where to run.
            captioner: a captioner checkpoint (:func:`omtseg.checkpoint.save_captioner`) for this segmenter.
            **kwargs: :class:`Segmenter` options (``image_size``, ``batch_size``, ``caption_max_tokens``);
                ``image_size`` defaults to the size the checkpoint's training data evaluated at (640 when
                the file does not say).

        Raises:
            FileNotFoundError: a checkpoint (or the BEiT-3 file it refers to) is missing.
            ValueError: not an omtseg checkpoint, no saved model config, or a captioner for another model.
        """
        check_checkpoint(Path(path), need_model_config=True)
        if "image_size" not in kwargs:
            kwargs["image_size"] = checkpoint_eval_size(Path(path)) or 640
        module = OMTSegModule.load_from_checkpoint(str(path), map_location="cpu")
        loaded = None
        if captioner is not None:
            loaded, config = load_captioner(Path(captioner))
            width = module.model.decoder.decoder_norm.normalized_shape[0]
            if config.get("query_dim", 256) != width:
                raise ValueError(
                    f"The captioner in {captioner} reads {config.get('query_dim', 256)}-wide decoder queries "
                    f"but the segmenter in {path} has {width}; use the captioner trained on this segmenter."
                )
        return cls(module.model, device=device, captioner=loaded, **kwargs)

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike[str], device: str = "cpu", threads: int | None = None, **kwargs: Any
    ) -> Segmenter:
        """Load a file written by ``omtseg export``, run by ONNX Runtime: the results the checkpoint it was
        exported from gives for the same images padded to the file's image size (no captioning).

        Args:
            path: the ``.onnx`` file.
            device: ``"cpu"`` (CPU provider) or ``"cuda[:N]"`` (CUDA provider, with onnxruntime-gpu).
            threads: ONNX Runtime intra-op threads (default: every core).
            **kwargs: ``image_size`` (default: the file's longer side) and ``batch_size``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an omtseg export, or no provider for ``device``.
        """
        return ExportedSegmenter(OnnxSegmenter(path, device=device, threads=threads), **kwargs)

    # ------------------------------------------------------------------------------------------ segmenting

    def vocabulary(self, classes: Sequence[str]) -> Vocabulary:
        """The vocabulary of a class list (cached, so the model's text work is cached with it)."""
        if isinstance(classes, str):
            raise ValueError(f"classes must be a list with one entry per class, not the string {classes!r}.")
        key = tuple(classes)
        vocabulary = self._vocabularies.get(key)
        if vocabulary is None:
            vocabulary = class_list_vocabulary(*parse_class_list(key, source="classes"))
        self._vocabularies[key] = vocabulary
        self._vocabularies.move_to_end(key)
        while len(self._vocabularies) > 32:
            self._vocabularies.popitem(last=False)
        return vocabulary

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        classes: Sequence[str],
        *,
        names: Sequence[str] | None = None,
        batch_size: int | None = None,
        captions: bool | None = None,
        object_threshold: float | None = None,
        overlap_threshold: float | None = None,
        top_k: int | None = None,
        seen_class_penalty: float | None = None,
        tasks: Sequence[str] = TASKS,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image (-> a result) or a list (-> a list of results, batched).

        Args:
            images: an :data:`ImageLike` or a list of them.
            classes: one entry per class: ``"cat"``, ``"tv, monitor"`` (synonyms), ``"stuff: sky"``.
            names: per image, the file name its results carry (COCO ``file_name``; ``image_id`` is its stem);
                default: a path's file name, else ``image_<i>.png``.
            batch_size: images per forward pass (default: the segmenter's).
            captions: caption every segment (default: when a captioner is loaded).
            object_threshold: panoptic minimum query score (default: the checkpoint's).
            overlap_threshold: panoptic minimum visible share of a query's mask (default: the checkpoint's).
            top_k: instances kept per image (default: the checkpoint's).
            seen_class_penalty: calibration: lowered logit of the classes the checkpoint was trained on, so
                names it never learned can win (default: the model's, 0 unless set; ``omtseg calibrate``).
            tasks: the results to compute, any of "panoptic" (segments, captions), "semantic", "instance"
                (default: all). Instances are ``top_k`` masks at the image's full size (100 of them: 1.2 GB
                for a 12-megapixel photo): leave "instance" out when only segments or labels are wanted.
        """
        single = not isinstance(images, (list, tuple))
        items: list[Any] = [images] if single else list(cast(Sequence[Any], images))
        if names is not None and len(names) != len(items):
            raise ValueError(f"Got {len(names)} names for {len(items)} images; give one name per image.")
        vocabulary = self.vocabulary(classes)
        samples = [self.sample(image, self._name(image, i, names)) for i, image in enumerate(items)]
        size = batch_size or self.batch_size
        results: list[SegmentationResult] = []
        for start in range(0, len(samples), size):
            results += self.segment_samples(
                samples[start : start + size],
                vocabulary,
                captions=captions,
                object_threshold=object_threshold,
                overlap_threshold=overlap_threshold,
                top_k=top_k,
                seen_class_penalty=seen_class_penalty,
                tasks=tasks,
            )
        return results[0] if single else results

    @staticmethod
    def _name(image: Any, index: int, names: Sequence[str] | None) -> str:
        if names is not None:
            return names[index]
        if isinstance(image, (str, os.PathLike)):
            return Path(image).name
        return f"image_{index}.png"

    def sample(self, image: ImageLike, name: str) -> tuple[np.ndarray, Sample]:
        """An image read and transformed for the model: ``(the (H, W, 3) uint8 image, its sample)``."""
        array = image_array(image)
        h, w = array.shape[:2]
        info = ImageInfo(image_id=Path(name).stem, file_name=name, orig_size=(h, w), resized_size=(h, w))
        sample = Sample(image=torch.tensor(array).permute(2, 0, 1).contiguous(), targets=None, info=info)
        return array, self.transform(sample)

    def _segmenter_pass(
        self, batch: Batch, tasks: Sequence[str] = TASKS, **thresholds: Any
    ) -> tuple[list[ImageResult], SegmenterPass]:
        """The post-processed results of one pass over ``batch`` and what the pass left for captions."""
        with SegmenterTap(self.model) as tap:
            raw = self.model.predict(batch, tasks=tasks, **thresholds)
            return raw, tap.captured(raw)

    @torch.no_grad()
    def segment_samples(
        self,
        samples: Sequence[tuple[np.ndarray, Sample]],
        vocabulary: Vocabulary,
        *,
        captions: bool | None = None,
        tasks: Sequence[str] = TASKS,
        **thresholds: Any,
    ) -> list[SegmentationResult]:
        """Segment prepared samples (:meth:`sample`) in one forward pass; see :meth:`__call__`. ``tasks``:
        the results to compute ("panoptic", needed for segments and captions, "semantic", "instance")."""
        batch = collate([s for _, s in samples], vocabulary=vocabulary, size_divisibility=SIZE_DIVISOR)
        batch = batch.to(self.device)
        if captions and self.captioner is None:
            raise ValueError("captions=True needs a captioner: from_checkpoint(..., captioner=...).")
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown or not tasks:
            raise ValueError(f"tasks={list(tasks)}: choose any of {list(TASKS)}.")
        if captions and "panoptic" not in tasks:
            raise ValueError("captions=True describes panoptic segments: keep 'panoptic' in tasks.")
        if "panoptic" not in tasks:
            captions = False
        raw, passed = self._segmenter_pass(batch, tasks, **thresholds)
        if self.captioner is not None and captions is not False:
            caption_segments(passed, self.captioner, batch, max_new_tokens=self.caption_max_tokens)
        return [
            SegmentationResult(
                image=array,
                vocabulary=vocabulary,
                raw=_to_cpu(result),
                embeddings=_segment_embeddings(result, passed.mask_logits[i], passed.queries[i], batch),
            )
            for i, ((array, _), result) in enumerate(zip(samples, raw, strict=True))
        ]

    # ------------------------------------------------------------------------------------------ captioning

    @torch.no_grad()
    def caption(
        self,
        image: ImageLike,
        classes: Sequence[str] | None = None,
        *,
        boxes: Sequence[Sequence[float]] = (),
        points: Sequence[Sequence[float]] = (),
        masks: np.ndarray | Tensor | None = None,
        min_iou: float = 0.5,
        name: str = "image.png",
    ) -> CaptionResult:
        """Caption the regions a user points at, all from one segmenter pass; without prompts, every segment.

        A box captions the predicted segment it matches (IoU >= ``min_iou``), else the box region itself; a
        point the segment under it, else the segmenter's own proposal there (the mask of the query most
        confident at it), else a window around it; a mask that region. A prompt is always captioned (see
        :mod:`omtseg.captioning.prompts`).

        Args:
            image: the image.
            classes: the classes segments are found with (as in :meth:`__call__`); default the 133 COCO
                panoptic classes.
            boxes: ``x0, y0, x1, y1`` in pixels of the image.
            points: ``x, y`` in pixels of the image.
            masks: (S, H, W) bool regions at the image's size.
            min_iou: IoU a segment needs to stand for a box.
            name: the file name the result carries.

        Returns:
            The captions, one per box, then per point, then per mask (or per segment), with their regions,
            the segmentation of the pass, an overlay and JSON.

        Raises:
            ValueError: no captioner, or a malformed or out-of-image prompt.
        """
        if self.captioner is None:
            raise ValueError("Captioning needs a captioner: Segmenter.from_checkpoint(..., captioner=...).")
        vocabulary = self.vocabulary(coco_classes() if classes is None else classes)
        array, sample = self.sample(image, name)
        batch = collate([sample], vocabulary=vocabulary, size_divisibility=SIZE_DIVISOR).to(self.device)
        regions = None if masks is None else torch.as_tensor(np.asarray(masks), dtype=torch.bool)
        with SegmenterTap(self.model) as tap:
            raw = self.model.predict(batch, tasks=TASKS)
            passed = tap.captured(raw)
        captions = caption_prompts(
            passed, self.captioner, batch, boxes=boxes, points=points, masks=regions, min_iou=min_iou,
            max_new_tokens=self.caption_max_tokens,
        )  # fmt: skip
        segmentation = SegmentationResult(
            image=array,
            vocabulary=vocabulary,
            raw=_to_cpu(raw[0]),
            embeddings=_segment_embeddings(raw[0], passed.mask_logits[0], passed.queries[0], batch),
        )
        return CaptionResult(image=array, regions=captions, segmentation=segmentation)


@dataclass
class CaptionResult:
    """Captions of one image's regions (:meth:`Segmenter.caption`).

    Attributes:
        image: (H, W, 3) uint8, the image captioned.
        regions: per prompt (boxes, then points, then masks) or per segment, the region and its caption.
        segmentation: the segmentation of the same pass.
    """

    image: np.ndarray
    regions: list[RegionCaption]
    segmentation: SegmentationResult

    @property
    def captions(self) -> list[str]:
        """The captions, in region order."""
        return [r.caption for r in self.regions]

    def overlay(self, *, alpha: float = 0.45, min_side: int = 512) -> Image.Image:
        """The image with each region colored, its prompt drawn, and its number and caption on it."""
        prompts: list[tuple[str, Sequence[float]] | None] = [
            (r.prompt, r.value) if isinstance(r.value, list) else None for r in self.regions
        ]
        picture = overlay_regions(
            self.image, [r.mask for r in self.regions], self.captions, prompts=prompts, alpha=alpha,
            min_side=min_side,
        )  # fmt: skip
        return Image.fromarray(picture)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: the image's name and size, and each region with its caption."""
        info = self.segmentation.info
        h, w = info.orig_size
        return {"image_id": info.image_id, "file_name": info.file_name, "height": h, "width": w,
                "regions": [r.to_json() for r in self.regions]}


def coco_classes() -> list[str]:
    """The 133 COCO panoptic classes as class-list entries (things, then ``"stuff: ..."``), with synonyms."""
    vocabulary = read_categories_json(COCO_CATEGORIES)
    return [
        ", ".join(names) if thing else f"stuff: {', '.join(names)}"
        for names, thing in zip(vocabulary.synonyms, vocabulary.is_thing, strict=True)
    ]


class ExportedSegmenter(Segmenter):
    """A :class:`Segmenter` whose network is an exported file run by ONNX Runtime (see :meth:`from_onnx`).

    Images are read, resized, batched and post-processed as by the PyTorch segmenter, and results are the
    same objects; batches are padded to the file's fixed image size. It has no captioner.

    Args:
        runtime: the exported segmenter in its ONNX Runtime session.
        image_size: long side images are resized to (default: the file's longer side; at most that).
        batch_size: images per run.
    """

    def __init__(self, runtime: OnnxSegmenter, *, image_size: int | None = None, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.runtime = runtime
        self.device = torch.device("cpu")  # pre- and post-processing; the session places the network
        self.captioner = None
        size = max(runtime.image_hw) if image_size is None else image_size
        self.transform = EvalTransform(size=size, size_divisibility=SIZE_DIVISOR)
        self.batch_size = batch_size
        self.caption_max_tokens = 0
        self._vocabularies = OrderedDict()

    def _segmenter_pass(
        self, batch: Batch, tasks: Sequence[str] = TASKS, **thresholds: Any
    ) -> tuple[list[ImageResult], SegmenterPass]:
        raw, queries, mask_logits = self.runtime.predict(batch, tasks=tasks, **thresholds)
        return raw, SegmenterPass(multi_scale=[], queries=queries, mask_logits=mask_logits, results=raw)


def _computed(value: object, task: str) -> None:
    """Raise the fix when a result's ``task`` was left out of the call's ``tasks``."""
    if value is None:
        raise ValueError(f"No {task} result: this image was segmented without it; include {task!r} in tasks.")


def _to_cpu(result: ImageResult) -> ImageResult:
    if result.panoptic is not None:
        result.panoptic.id_map = result.panoptic.id_map.cpu()
    if result.semantic is not None:
        sem = result.semantic
        sem.labels, sem.scores = sem.labels.cpu(), None if sem.scores is None else sem.scores.cpu()
    if result.instances is not None:
        inst = result.instances
        inst.masks, inst.labels, inst.scores = inst.masks.cpu(), inst.labels.cpu(), inst.scores.cpu()
    return result


def _segment_embeddings(
    result: ImageResult, mask_logits: Tensor, queries: Tensor, batch: Batch
) -> np.ndarray:
    """(S, C) the query embedding of each panoptic segment: the query whose mask (logit > 0 at the original
    size) has the highest IoU with the segment. mask_logits: (Q, h, w) on the canvas; queries: (Q, C)."""
    segments = result.panoptic.segments if result.panoptic is not None else []
    if not segments:
        return np.zeros((0, queries.shape[-1]), dtype=np.float32)
    assert result.panoptic is not None
    h, w = batch.images.shape[-2:]
    canvas = (h + (-h % SIZE_DIVISOR), w + (-w % SIZE_DIVISOR))
    masks = OutputMasks(mask_logits, canvas_hw=canvas, info=result.info)
    ious = segment_query_ious(masks, result.panoptic.id_map.to(mask_logits.device), [s.id for s in segments])
    return queries[ious.argmax(1)].float().cpu().numpy()
