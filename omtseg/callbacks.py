"""Lightning callbacks: the prediction writer of ``omtseg predict``.

Output layout under ``output_dir``::

    panoptic.json              COCO panoptic predictions (annotations + categories of the vocabulary);
                               with a captioner, every ``segments_info`` entry also holds its ``caption``
    panoptic/<stem>.png        segment ids as R + 256 G + 256^2 B
    semantic/<stem>.png        per-pixel category id (uint8, or uint16 for ids above 255)
    overlays/<stem>.png        the image with colored segments, class names (and captions)

A file that cannot be read is named with its reason and skipped (the others are written), and the run ends
with a summary; ``omtseg predict`` then exits with status 1. ``panoptic.json`` is written only by a run
that finishes: a previous run's is removed at the start, and a crash leaves no partial merge behind.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.inference import SegmenterTap, caption_segments
from omtseg.checkpoint import load_captioner
from omtseg.evaluation.export import export_panoptic_predictions, semantic_category_map
from omtseg.io import load_json, read_image, save_image, save_json
from omtseg.modeling.segmenter import OMTSeg
from omtseg.types import Batch, ImageInfo, ImageResult, Vocabulary
from omtseg.visualize import overlay_result

_PARTS = ".panoptic_parts"
WRITTEN_TASKS = ("panoptic", "semantic")
"""The post-processing tasks whose results the writer writes (instances are not written)."""


def original_image(image: torch.Tensor, info: ImageInfo) -> np.ndarray:
    """The batch image mapped back to the file's frame: padding cut, resized to ``orig_size``, un-flipped.

    Args:
        image: (3, H, W) uint8, as in :class:`~omtseg.types.Batch`.
        info: the image's size bookkeeping.

    Returns:
        (H0, W0, 3) uint8 RGB.
    """
    h, w = info.resized_size
    content = image[:, :h, :w].float()[None]  # (1, 3, h, w)
    if (h, w) != tuple(info.orig_size):
        content = F.interpolate(content, size=tuple(info.orig_size), mode="bilinear", align_corners=False)
    if info.flipped:
        content = content.flip(-1)
    return content[0].round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


def _segmenter(pl_module: L.LightningModule) -> OMTSeg:
    model = getattr(pl_module, "model", None)
    if not isinstance(model, OMTSeg):
        raise ValueError(
            f"Captioning needs an OMTSeg as the LightningModule's `model`, got {type(model).__name__}."
        )
    return model


class PanopticPredictionWriter(BasePredictionWriter):
    """Write what ``predict_step`` returns (``list[ImageResult]``) as files, batch by batch.

    Panoptic PNGs are written per batch with a partial JSON each; the epoch end merges them into
    ``panoptic.json``, so memory stays flat however many images are segmented.

    Args:
        output_dir: folder for the outputs (created).
        overlays: also write overlay pictures.
        overlay_alpha: color opacity of overlays.
        overlay_min_side: overlays of smaller images are enlarged (whole factors, nearest) until their
            short side reaches this many pixels, so that class names stay readable on tiny images.
        image_dir: folder of the original images (``info.file_name`` is relative to it), where overlays
            are drawn at full quality; None: the datamodule's ``predict_image_dir``. Only where neither
            has the file are overlays drawn on the batch image, resized back.
        captioner_ckpt: a captioner saved by :func:`~omtseg.checkpoint.save_captioner` for the
            segmenter being run; every panoptic segment then gets a caption (JSON and overlays).
        caption_max_tokens: caption length limit in tokens.
    """

    def __init__(
        self,
        *,
        output_dir: str = "outputs/predict",
        overlays: bool = True,
        overlay_alpha: float = 0.55,
        overlay_min_side: int = 512,
        image_dir: str | None = None,
        captioner_ckpt: str | None = None,
        caption_max_tokens: int = 20,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self.overlay_alpha = overlay_alpha
        self.overlay_min_side = overlay_min_side
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.captioner_ckpt = captioner_ckpt
        self.caption_max_tokens = caption_max_tokens
        self._vocabulary: Vocabulary | None = None
        self.failed: dict[str, str] = {}
        """Files of this run that could not be read, with the reason (they are skipped)."""
        self.written = 0
        self._captioner: SegmentCaptioner | None = None
        self._tap: SegmenterTap | None = None
        self._originals: Path | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A previous run's panoptic.json would look like this run's result until the end: only a run that
        # finishes writes one (as `omtseg segment` does).
        if trainer.is_global_zero:
            (self.output_dir / "panoptic.json").unlink(missing_ok=True)
            shutil.rmtree(self.output_dir / _PARTS, ignore_errors=True)
        trainer.strategy.barrier()
        self._narrow_tasks(pl_module)
        self._vocabulary = None
        self.failed = {}
        self.written = 0
        datamodule = getattr(trainer, "datamodule", None)
        folder = self.image_dir or getattr(datamodule, "predict_image_dir", None)
        self._originals = Path(folder) if folder is not None else None
        if self.captioner_ckpt is not None and self._captioner is None:
            captioner, config = load_captioner(self.captioner_ckpt)
            width = _segmenter(pl_module).decoder.decoder_norm.normalized_shape[0]
            query_dim = config.get("query_dim", 256)
            if query_dim != width:
                raise ValueError(
                    f"The captioner in {self.captioner_ckpt} reads {query_dim}-wide decoder queries but this "
                    f"segmenter's are {width} wide; use the captioner trained on this segmenter."
                )
            self._captioner = captioner.to(pl_module.device)

    @staticmethod
    def _narrow_tasks(pl_module: L.LightningModule) -> None:
        """Let ``predict_step`` compute only what this writer writes: instance masks at the original size
        (up to ``instance_top_k`` full-size masks per image) would cost memory and time for nothing."""
        module: Any = pl_module  # an OMTSegModule (not imported here: Lightning modules sit above callbacks)
        tasks = getattr(module, "predict_tasks", None)
        if tasks is None:
            return
        written = tuple(t for t in tasks if t in WRITTEN_TASKS)
        if not written:
            raise ValueError(
                f"predict_tasks {list(tasks)}: the prediction writer writes only {list(WRITTEN_TASKS)} "
                "outputs; ask for one of them (e.g. --model.predict_tasks '[panoptic, semantic]')."
            )
        module.predict_tasks = written

    def on_predict_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # The captioner reads the segmenter's features, which predict_step does not return: a tap keeps
        # them from predict_step's own pass, so the segmenter runs once per batch.
        if self._captioner is not None:
            self._remove_tap()
            self._tap = SegmenterTap(_segmenter(pl_module))

    def _remove_tap(self) -> None:
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    def _caption(self, prediction: list[ImageResult], batch: Batch) -> None:
        """Set ``caption`` on every panoptic segment of ``prediction`` (from the pass the tap kept)."""
        assert self._captioner is not None and self._tap is not None
        captured = self._tap.captured(prediction)
        self._remove_tap()
        caption_segments(captured, self._captioner, batch, max_new_tokens=self.caption_max_tokens)

    @staticmethod
    def _add_captions(json_path: Path, prediction: Sequence[ImageResult]) -> None:
        """Write each segment's caption into its ``segments_info`` entry of a partial JSON."""
        texts = {
            (r.info.image_id, s.id): s.caption
            for r in prediction
            if r.panoptic is not None
            for s in r.panoptic.segments
        }
        data = load_json(json_path)
        for ann in data["annotations"]:
            for entry in ann["segments_info"]:
                entry["caption"] = texts.get((ann["image_id"], entry["id"]))
        save_json(data, json_path)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[ImageResult],
        batch_indices: Sequence[int] | None,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        vocabulary = batch.vocabulary
        if self._vocabulary is not None and vocabulary != self._vocabulary:
            raise ValueError("The vocabulary changed between prediction batches; predict with one at a time.")
        self._vocabulary = vocabulary
        rank, out = trainer.global_rank, self.output_dir
        for name, reason in batch.skipped:
            self.failed[name] = reason
            print(f"skipped {name}: {reason}", file=sys.stderr)
        self.written += len(prediction)
        if self._captioner is not None and prediction:
            self._caption(list(prediction), batch)
        panoptic = [(r.info, r.panoptic) for r in prediction if r.panoptic is not None]
        if panoptic:
            part = export_panoptic_predictions(
                panoptic,
                vocabulary=vocabulary,
                json_path=out / _PARTS / f"{dataloader_idx}_{rank}_{batch_idx:08d}.json",
                folder=out / "panoptic",
            )
            if self._captioner is not None:
                self._add_captions(part, prediction)
        for image, result in zip(batch.images, prediction, strict=True):
            stem = Path(result.info.file_name).with_suffix(".png").as_posix()
            if result.semantic is not None:
                save_image(semantic_category_map(result.semantic.labels, vocabulary), out / "semantic" / stem)
            if not self.overlays:
                continue
            picture = self._original(image, result.info)
            picture = overlay_result(
                picture, result, vocabulary, alpha=self.overlay_alpha, min_side=self.overlay_min_side
            )
            save_image(picture, out / "overlays" / stem)

    def _original(self, image: torch.Tensor, info: ImageInfo) -> np.ndarray:
        """The picture to draw on: the image file at full quality, else the batch image resized back."""
        if self._originals is not None:
            try:
                picture = read_image(self._originals / info.file_name)
                if picture.shape[:2] == tuple(info.orig_size):
                    return picture
            except (FileNotFoundError, ValueError):
                pass  # the batch image was read from elsewhere: draw on it
        return original_image(image, info)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_tap()
        parts_dir = self.output_dir / _PARTS
        trainer.strategy.barrier()
        if trainer.is_global_zero and parts_dir.is_dir():
            annotations: list[dict[str, Any]] = []
            categories: list[dict[str, Any]] = []
            for part in sorted(parts_dir.glob("*.json")):
                data = json.loads(part.read_text())
                annotations += data["annotations"]
                categories = data["categories"]
            merged = {"annotations": annotations, "categories": categories}
            save_json(merged, self.output_dir / "panoptic.json")
            shutil.rmtree(parts_dir)
        trainer.strategy.barrier()
        if self.failed:
            total = self.written + len(self.failed)
            lines = "".join(f"\n  {name}: {reason}" for name, reason in self.failed.items())
            print(
                f"Predicted {self.written} of {total} images into {self.output_dir}/; "
                f"{len(self.failed)} could not be read and were skipped:{lines}",
                file=sys.stderr,
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # A crashed run leaves no half-merged parts; it has no panoptic.json (removed at the start).
        self._remove_tap()
        shutil.rmtree(self.output_dir / _PARTS, ignore_errors=True)
