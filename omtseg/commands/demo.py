"""``make demo``: the open-vocabulary world end to end on a CPU, every stage through the commands users run.

    omtseg demo [--out outputs/demo] [--config configs/world.yaml]
                [--pretrain_config configs/pretrain/world_tiny.yaml]
                [--backbone weights/beit3_tiny_world.pth]

1. ``omtseg pretrain``: BEiT-3's masked data modeling, with VLMo's image-text contrast and matching beside it,
   on the world's caption corpus (every word of the world, the analog of BEiT-3's web image-text pairs),
   written in the official format to ``--backbone``; reused when that file's record says the same
   pre-training config made it.
2. ``omtseg fit`` on the SEEN classes only (BEiT-3 frozen, adapter, ``<WLS>`` prompt tuning, Mask2Former head,
   Lion; vocabulary shuffled and sub-sampled per batch), then ``omtseg test`` of the best checkpoint on the
   seen test split, on unseen compositions and on novel concepts (prompted with all 28 names of the world).
3. A segment captioner trained over the frozen segmenter on region descriptions, scored on val.
4. ``omtseg predict`` on the novel-concept images with a user vocabulary that names novel concepts, and on
   the two real COCO sample images with the 133 COCO classes: overlays with the names.

Outputs under ``--out``: ``metrics.json`` (PQ per class group and split, the val/pq learning curve,
caption scores, wall time), ``learning_curve.png``, ``predict_novel/`` and ``predict_coco/`` (COCO-panoptic
PNG + JSON, semantic PNGs, overlays), ``train/`` (checkpoints, logs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.captioning.language_model import make_word_level_lm
from omtseg.checkpoint import load_segmenter, save_captioner
from omtseg.cli import build_cli
from omtseg.commands.pretrain import ensure_pretrained
from omtseg.commands.runs import calibrate, fit_and_test, zero_shot_test
from omtseg.data.caption_text import synthetic_caption_words
from omtseg.data.coco_panoptic import CocoPanopticDataset
from omtseg.data.regions import PanopticRegionCaptions, collate_regions
from omtseg.data.transforms import EvalTransform
from omtseg.data.vocabulary import read_categories_json
from omtseg.data.world import world_split_paths
from omtseg.evaluation.caption import evaluate_captions
from omtseg.io import load_json, save_image, save_json
from omtseg.lit_captioner import CaptionerModule
from omtseg.modeling.segmenter import OMTSeg
from omtseg.visualize import line_plot

COCO_SAMPLE = Path(str(resources.files("omtseg") / "assets" / "coco_sample"))
"""The two COCO val2017 images (and the 133 COCO categories) shipped with the package (see its NOTICE.md)."""


NOVEL_VOCABULARY = (
    ["orange ball", "orange ring", "red cross", "blue cross", "yellow box", "blue ball"],
    ["snow", "lava", "sky", "grass", "water"],
)
"""(things, stuff) a user might type to find novel concepts: orange, cross, snow and lava are words no
segmentation label of the world holds; the rest are seen or unseen-composition names as distractors."""

DISTRACTORS = (
    ["purple ball", "pink box", "white ring", "black star", "brown triangle"],
    ["mud", "ice", "forest"],
)
"""(things, stuff) of nothing in the world, words no caption holds either: added to the vocabulary, a model
that reads names gives them no pixel of the novel classes."""


def names_not_positions(
    config_args: list[str], ckpt: str, run_dir: Path, data_root: Path, out: Path
) -> dict[str, float | None]:
    """Novel-concept PQ of ``ckpt`` with the novel split's 28 names in reverse order, and with the 8
    :data:`DISTRACTORS` added: a model that reads the names, not their positions, keeps its PQ."""
    categories = load_json(Path(str(world_split_paths(data_root, "novel").categories_json)))
    things, stuff = DISTRACTORS
    extra = [
        {"id": 201 + i, "name": name, "isthing": int(i < len(things)), "color": [60 + 20 * i, 60, 90],
         "supercategory": "thing" if i < len(things) else "stuff", "split": "distractor"}
        for i, name in enumerate(things + stuff)
    ]  # fmt: skip
    pq: dict[str, float | None] = {}
    for variant, cats in (("reversed", categories[::-1]), ("distractors", categories + extra)):
        path = out / f"categories_novel_{variant}.json"
        save_json(cats, path, indent=1)
        pq[variant] = zero_shot_test(config_args, ckpt, run_dir, "novel", path).get("test/pq_novel")
    return pq


def region_captions(data_root: Path, split: str, image_size: int) -> PanopticRegionCaptions:
    """A world ``split`` as regions (:func:`~omtseg.data.caption_text.synthetic_region_captions`)."""
    paths = world_split_paths(data_root, split)
    base = CocoPanopticDataset(
        image_dir=paths.image_dir,
        panoptic_dir=paths.panoptic_dir,
        panoptic_json=paths.panoptic_json,
        categories_json=paths.categories_json,
        transform=EvalTransform(size=image_size),
    )
    return PanopticRegionCaptions(dataset=base, vocabulary=base.vocabulary, captions="synthetic")


def train_captioner(
    segmenter: OMTSeg,
    segmenter_ckpt: str,
    data_root: Path,
    out: Path,
    *,
    image_size: int = 64,
    max_steps: int = 250,
    batch_size: int = 8,
    num_examples: int = 5,
) -> dict[str, Any]:
    """Train a captioner over the frozen segmenter on the world's train split, score it on val, save it.

    Args:
        segmenter: the segmenter as configured for training (its best weights are loaded from
            ``segmenter_ckpt``).
        segmenter_ckpt: the ``omtseg fit`` checkpoint to caption with.
        data_root: the world's folder.
        out: gets ``caption_lm/`` (the language model) and ``captioner.ckpt``.
        image_size: the world's images' side in pixels.
        max_steps: optimizer steps.
        batch_size: images per step (all their segments are captioned).
        num_examples: (prediction, reference) pairs kept for the report.

    Returns:
        ``{"checkpoint", "scores" (val: bleu_1..4, rouge_l, cider_d, and meteor where Java runs), "protocol"
        ("official": pycocoevalcap's PTB tokens, else "not the official tokenizer: <why>"), "unavailable",
        "examples", "train_s"}``.
    """
    start = time.perf_counter()
    train = region_captions(data_root, "train", image_size)
    val = region_captions(data_root, "val", image_size)
    lm_dir = make_word_level_lm(out / "caption_lm", synthetic_caption_words(train.vocabulary), width=64)
    width = segmenter.decoder.decoder_norm.normalized_shape[0]
    config: dict[str, Any] = dict(
        language_model=str(lm_dir),
        feature_dim=segmenter.pixel_decoder.conv_dim,
        query_dim=width,
        width=128,
        num_layers=4,
        num_heads=4,
        ffn_dim=256,
        # A random tiny LM knows no language to keep: it must learn the captions' words with the mixer.
        freeze_language_model=False,
    )
    L.seed_everything(0, verbose=False)
    load_segmenter(segmenter, segmenter_ckpt)
    module = CaptionerModule(
        segmenter=segmenter,
        captioner=SegmentCaptioner(**config),
        class_names=list(train.vocabulary.names),
        optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
        max_new_tokens=16,
        official_metrics=False,  # validation never runs here (no val loader); val is scored below
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        default_root_dir=out / "caption_train",
    )
    trainer.fit(module, DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate_regions))
    module.eval()
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    for batch in DataLoader(val, batch_size=batch_size, collate_fn=collate_regions):
        for rid, text, refs in zip(batch.region_ids, module.caption(batch), batch.captions, strict=True):
            predictions[rid], references[rid] = text, refs
    evaluation = evaluate_captions(predictions, references)  # the official protocol where Java runs
    checkpoint = save_captioner(module.captioner, config, out / "captioner.ckpt")
    return {
        "checkpoint": str(checkpoint),
        "scores": {k: round(v, 4) for k, v in evaluation.scores.items()},
        "protocol": evaluation.protocol,
        "unavailable": evaluation.unavailable,
        "examples": [
            {"prediction": predictions[k], "reference": references[k][0]}
            for k in list(predictions)[:num_examples]
        ],
        "train_s": round(time.perf_counter() - start, 1),
    }


def coco_names() -> tuple[list[str], list[str]]:
    """The 133 COCO panoptic classes as (thing, stuff) entries with their synonyms (``"tv, monitor"``)."""
    vocabulary = read_categories_json(COCO_SAMPLE / "panoptic_coco_categories.json")
    entries = [", ".join(s) for s in vocabulary.synonyms]
    things = [e for e, t in zip(entries, vocabulary.is_thing, strict=True) if t]
    stuff = [e for e, t in zip(entries, vocabulary.is_thing, strict=True) if not t]
    return things, stuff


def predict(config_args: list[str], ckpt: str, images: Path, out: Path, *extra: str) -> None:
    """Segment a folder of images with ``omtseg predict`` into ``out``."""
    build_cli(
        [
            "predict", *config_args, "--ckpt_path", ckpt,
            "--data.init_args.predict_image_dir", str(images),
            "--prediction_writer.output_dir", str(out),
            "--prediction_writer.image_dir", str(images),
            "--trainer.default_root_dir", str(out / "logs"),
            *extra,
        ]
    )


def run(config: Path, out: Path, pretrain_config: Path, backbone: Path) -> dict[str, Any]:
    """The whole demo; returns what ``metrics.json`` holds."""
    start = time.perf_counter()
    pretrained = ensure_pretrained(pretrain_config, backbone, half=True)
    pretrain_s = time.perf_counter() - start
    config_args = ["--config", str(config), "--model.backbone_weights", str(backbone)]
    result = fit_and_test(config_args, out / "train")
    curve = result.pop("curve")
    save_image(
        line_plot(
            {"val/pq": [(c["step"], c["val/pq"]) for c in curve]},
            title="Open-vocabulary world: validation PQ (seen classes)",
            x_label="training step",
            y_label="PQ",
        ),
        out / "learning_curve.png",
    )
    ckpt, data_root = result["best_checkpoint"], Path(result["data_root"])
    zero_shot = {s: zero_shot_test(config_args, ckpt, out / "train", s) for s in ("unseen", "novel")}
    # Calibrated stacking: the seen-class penalty chosen on unseen_val images (none of the test images).
    sweep = calibrate(config_args, ckpt)
    penalty = sweep.best
    calibrated = zero_shot
    if penalty:
        run_dir = out / "train"
        calibrated = {
            s: zero_shot_test(config_args, ckpt, run_dir, s, seen_class_penalty=penalty) for s in zero_shot
        }
    invariance = {
        "as_given": zero_shot["novel"].get("test/pq_novel"),
        **names_not_positions(config_args, ckpt, out / "train", data_root, out),
    }
    caption = train_captioner(result.pop("segmenter"), ckpt, data_root, out)
    novel_images = Path(world_split_paths(data_root, "novel").image_dir)
    things, stuff = NOVEL_VOCABULARY
    predict(
        config_args, ckpt, novel_images, out / "predict_novel",
        "--data.init_args.predict_class_names", json.dumps(things),
        "--data.init_args.predict_stuff_names", json.dumps(stuff),
        "--captioner_ckpt", caption["checkpoint"],
        "--model.model.init_args.seen_class_penalty", repr(float(penalty)),
    )
    things, stuff = coco_names()
    predict(
        config_args, ckpt, COCO_SAMPLE / "images", out / "predict_coco",
        "--data.init_args.predict_class_names", json.dumps(things),
        "--data.init_args.predict_stuff_names", json.dumps(stuff),
    )
    test = result["test"]
    groups = {
        "seen": test.get("test/pq_seen", test.get("test/pq")),
        "unseen": zero_shot["unseen"].get("test/pq_unseen"),
        "novel": zero_shot["novel"].get("test/pq_novel"),
    }
    metrics = {
        "config": str(config),
        "backbone": {"path": str(backbone), **pretrained, "pretrain_s": round(pretrain_s, 1)},
        "wall_time_s": round(time.perf_counter() - start, 1),
        "fit_s": round(result["fit_s"], 1),
        "best_val_pq": max((c["val/pq"] for c in curve), default=None),
        "pq_by_group": groups,
        "test": test,
        "zero_shot": zero_shot,
        "novel_pq_by_vocabulary": invariance,
        "calibration": {
            "split": "unseen_val",
            "seen_class_penalty": penalty,
            "sweep": list(sweep.rows),
            "pq_by_group": {
                "unseen": calibrated["unseen"].get("test/pq_unseen"),
                "novel": calibrated["novel"].get("test/pq_novel"),
            },
            "zero_shot": calibrated,
        },
        "caption": caption,
        "learning_curve": curve,
        "best_checkpoint": ckpt,
        "learning_curve_png": str(out / "learning_curve.png"),
        "overlays": [str(out / "predict_novel" / "overlays"), str(out / "predict_coco" / "overlays")],
    }
    save_json(metrics, out / "metrics.json", indent=1)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``omtseg demo``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="omtseg demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/world.yaml"), help="recipe YAML")
    parser.add_argument(
        "--pretrain_config", type=Path, default=Path("configs/pretrain/world_tiny.yaml"),
        help="BEiT-3 pre-training recipe",
    )
    parser.add_argument(
        "--backbone", type=Path, default=Path("weights/beit3_tiny_world.pth"),
        help="pretrained BEiT-3 file: reused when the pre-training recipe made it, else written",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1)")
    args = parser.parse_args(argv)
    # The tiny model is made of small ops: one thread measured ~10x less CPU time per step than two.
    torch.set_num_threads(args.threads)
    if not args.config.is_file():
        raise FileNotFoundError(f"Config not found: {args.config}. Give a recipe such as configs/world.yaml.")
    metrics = run(args.config, args.out, args.pretrain_config, args.backbone)
    groups = {k: float("nan") if v is None else v for k, v in metrics["pq_by_group"].items()}
    names = {k: float("nan") if v is None else v for k, v in metrics["novel_pq_by_vocabulary"].items()}
    calibration = metrics["calibration"]
    cal = {k: float("nan") if v is None else v for k, v in calibration["pq_by_group"].items()}
    backbone = metrics["backbone"]
    pretraining = "reused" if backbone["reused"] else f"{backbone['pretrain_s']:.0f} s"
    print(
        f"\nDemo done in {metrics['wall_time_s']:.0f} s (BEiT-3 pretraining {pretraining}, held-out "
        f"masked-token accuracy {backbone['metrics'].get('val/mlm_acc', float('nan')):.2f} vs unigram "
        f"{backbone['metrics'].get('val/unigram_acc', float('nan')):.2f}).\n"
        f"Zero-shot PQ, trained on seen classes only: seen {groups['seen']:.1f}, "
        f"unseen compositions {groups['unseen']:.1f}, novel concepts {groups['novel']:.1f}.\n"
        f"Calibrated (seen_class_penalty {calibration['seen_class_penalty']:g}, chosen on unseen_val "
        f"images): unseen compositions {cal['unseen']:.1f}, novel concepts {cal['novel']:.1f}.\n"
        f"Names, not positions: novel-concept PQ {names['as_given']:.1f} with the 28 names as given, "
        f"{names['reversed']:.1f} reversed, {names['distractors']:.1f} with 8 distractor names added;\n"
        f"val captions CIDEr-D {metrics['caption']['scores']['cider_d']:.2f} "
        f"({metrics['caption']['protocol']}).\n"
        f"  metrics:        {args.out / 'metrics.json'}\n"
        f"  learning curve: {metrics['learning_curve_png']}\n"
        f"  overlays:       {metrics['overlays'][0]}  (novel names)\n"
        f"                  {metrics['overlays'][1]}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
