"""The omtseg ``.ckpt`` format: every rule for writing, reading and checking checkpoints lives here.

Segmenter checkpoints are Lightning checkpoints (``omtseg fit`` writes them) with two omtseg entries:

- ``omtseg_format``: :data:`FORMAT_VERSION`; a file without it was not written by omtseg (an official BEiT-3
  ``.pth`` given as a checkpoint, say) and is refused with a clear error.
- ``omtseg_eval_size``: the long side, in pixels, the training data config evaluated at (its ``eval_size``;
  absent when it kept original sizes or the file predates it): :class:`omtseg.api.Segmenter` resizes to it
  unless told otherwise, so a 64-pixel model is not fed 640-pixel images.
- ``omtseg_backbone``: ``{"path", "sha256"}`` of the official BEiT-3 file the frozen trunk was loaded from.
  Its frozen weights are then left out of ``state_dict`` (1.6 GB for BEiT-3-large) and restored from that
  file at load time, after checking that the file is the same one (sha256). A randomly initialised trunk has
  no such entry: its weights exist nowhere else, so they stay in the state dict.

Captioner checkpoints (:func:`save_captioner`) hold ``omtseg_captioner`` (:data:`CAPTIONER_FORMAT`), the
arguments that rebuild the captioner and its weights, the language model included. A Lightning checkpoint of
the captioner's training (``omtseg fit --config configs/caption/...``) carries the same entries
(:func:`add_captioner_entries`), its captioner weights under a key prefix: :func:`load_captioner` reads both.

Every file is read with ``torch.load(weights_only=True)``: hyperparameters must be plain data
(:func:`is_plain`), never pickled objects.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omtseg.captioning.captioner import SegmentCaptioner
from omtseg.modeling.backbone.beit3 import BEiT3
from omtseg.modeling.segmenter import OMTSeg

FORMAT_VERSION = 1
"""Version of the omtseg entries in a segmenter ``.ckpt`` (``omtseg_format``)."""
FORMAT_KEY = "omtseg_format"
BACKBONE_KEY = "omtseg_backbone"
TRAINED_NAMES_KEY = "omtseg_trained_names"  # the training classes' names, for seen_class_penalty
EVAL_SIZE_KEY = "omtseg_eval_size"  # the training data's evaluation long side, the default image size
CAPTIONER_FORMAT = 1
"""Version of a captioner checkpoint (``omtseg_captioner``)."""
CAPTIONER_KEY = "omtseg_captioner"
CAPTIONER_PREFIX_KEY = "omtseg_captioner_prefix"
"""Where the captioner's weights sit in a checkpoint's ``state_dict`` (absent: none, as save_captioner's)."""
SEGMENTER_PREFIX = "model."
"""Where the segmenter's weights sit in a Lightning checkpoint's ``state_dict`` (the module's ``model``)."""

_NOT_OMTSEG = (
    "was not written by omtseg (no 'omtseg_format' entry); give a .ckpt saved by `omtseg fit`. "
    "Official BEiT-3 .pth files go to model.backbone_weights instead."
)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (BEiT-3-large is 1.6 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_plain(value: Any) -> bool:
    """True for hyperparameters that survive ``torch.load(weights_only=True)``: configs, not live objects."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


# ------------------------------------------------------------------------------------------ reading files


def load_weights_only(path: Path, *, mmap: bool = False, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` with omtseg's message for a file it cannot read.

    torch's own message advises loading with ``weights_only=False``, which runs whatever the file pickled;
    omtseg never does, so the message says what is wrong with the file instead.

    Args:
        path: an existing file.
        mmap: memory-map it (only what is looked at is read).
        fix: the sentence that ends the message (what to give instead).

    Raises:
        ValueError: not a PyTorch file, damaged, or holding pickled objects other than tensors and plain data.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint (those are zip archives; this "
            f"file is damaged, truncated or another kind of file). {fix}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        unsafe = re.search(r"GLOBAL (\S+)", str(e))
        reason = (
            f"it holds pickled Python objects ({unsafe.group(1)}) that a safe, weights-only load refuses"
            if unsafe
            else "it is damaged or truncated"
        )
        raise ValueError(f"Cannot read checkpoint {path}: {reason}. {fix}") from None


def read_checkpoint(path: str | Path, *, header_only: bool = False) -> dict[str, Any]:
    """An omtseg segmenter checkpoint's content, read weights-only.

    Args:
        path: the ``.ckpt`` file.
        header_only: memory-map the file, so checking a checkpoint reads only what is looked at.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, or one not written by omtseg (e.g. an official BEiT-3 ``.pth``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}. Give the .ckpt written by `omtseg fit`.")
    checkpoint = load_weights_only(path, mmap=header_only, fix="Give a .ckpt written by `omtseg fit`.")
    if not isinstance(checkpoint, dict) or FORMAT_KEY not in checkpoint:
        raise ValueError(f"{path} {_NOT_OMTSEG}")
    return checkpoint


def checkpoint_eval_size(path: str | Path) -> int | None:
    """The evaluation long side a segmenter checkpoint was trained for (``omtseg_eval_size``), or None."""
    size = read_checkpoint(path, header_only=True).get(EVAL_SIZE_KEY)
    return None if size is None else int(size)


def check_checkpoint(path: str | Path, *, need_model_config: bool = False) -> None:
    """Fail early and clearly unless ``path`` is an omtseg ``.ckpt`` (before Lightning reads it).

    Args:
        path: the ``.ckpt`` file.
        need_model_config: also require the saved model config (``hyper_parameters["model"]``), which
            rebuilds the model without its YAML (``omtseg eval-all``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an omtseg checkpoint, or no saved model config when one is needed.
    """
    checkpoint = read_checkpoint(path, header_only=True)
    if need_model_config and "model" not in checkpoint.get("hyper_parameters", {}):
        raise ValueError(
            f"{path} holds no saved model config (hyper_parameters['model']); evaluate a checkpoint written "
            "by `omtseg fit`, or run `omtseg test` with the model's config."
        )


INFERENCE_SETTINGS = frozenset(
    {
        "object_threshold",
        "overlap_threshold",
        "instance_top_k",
        "seen_class_penalty",
        "vocabulary_cache_size",
        "activation_checkpointing",
    }
)
"""Keys of the segmenter config (``model.init_args``) that do not shape its weights: given for a run on a
checkpoint, they apply. Every other key of the segmenter is architecture and must match the checkpoint."""


def _plain_value(value: Any) -> Any:
    # Parsed configs hold tuples where saved ones hold lists; compare their contents.
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def merge_module_config(
    saved: Mapping[str, Any],
    given: Mapping[str, Any],
    given_keys: Collection[Sequence[str]],
    *,
    path: str | Path,
) -> dict[str, Any]:
    """The LightningModule config of a run on a checkpoint: the checkpoint's, with the run's own settings.

    Args:
        saved: the checkpoint's ``hyper_parameters`` (the module config it was trained with).
        given: the run's module config (its YAML and command line, parsed).
        given_keys: the settings the run gives explicitly, as paths without ``init_args``:
            ``("predict_tasks",)``, ``("model", "object_threshold")``, ``("criterion", "num_points")``;
            ``("model",)`` gives the whole segmenter config and ``()`` the whole module config.
        path: the checkpoint, named in messages.

    Returns:
        ``saved`` (keys it lacks from ``given``) with every given setting applied: the segmenter's
        :data:`INFERENCE_SETTINGS`, and any module setting outside the segmenter (tasks, criterion,
        optimizer).

    Raises:
        ValueError: a given segmenter setting contradicts the checkpoint's architecture (key and both values).
    """
    saved = {k: v for k, v in saved.items() if not k.startswith("_")}
    merged: dict[str, Any] = {**given, **saved}
    given_model = given.get("model") or {}
    saved_model = saved.get("model")
    whole = any(len(k) == 0 or tuple(k) == ("model",) for k in given_keys)
    top = {k[0] for k in given_keys if k and k[0] != "model"} | (set(given) - {"model"} if whole else set())
    for key in top:
        merged[key] = given[key]
    if not isinstance(saved_model, dict) or not given_model:
        return merged
    args = given_model.get("init_args") or {}
    keys = set(args) if whole else {k[1] for k in given_keys if len(k) > 1 and k[0] == "model"}
    if whole or ("model", "class_path") in {tuple(k) for k in given_keys}:
        old, new = saved_model.get("class_path"), given_model.get("class_path")
        if old != new:
            raise ValueError(
                f"model.model.class_path is {new!r} for this run but the checkpoint {path} holds a {old!r}."
            )
    saved_args = dict(saved_model.get("init_args") or {})
    for key in sorted(keys - {"class_path"}):
        if key in INFERENCE_SETTINGS or key not in saved_args:
            saved_args[key] = args[key]
        elif _plain_value(saved_args[key]) != _plain_value(args[key]):
            raise ValueError(
                f"model.model.init_args.{key} is {args[key]!r} for this run but the checkpoint {path} was "
                f"trained with {saved_args[key]!r}; the architecture comes from the checkpoint: leave the "
                f"option out (or give {saved_args[key]!r}). Settings that may differ: "
                f"{', '.join(sorted(INFERENCE_SETTINGS))}."
            )
    merged["model"] = {**saved_model, "init_args": saved_args}
    return merged


def check_state_fits(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Raise a clear error when a checkpoint's weights do not fit a model (another config or model).

    Raises:
        ValueError: keys missing or unknown, or weights of another shape (a few named).
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} weights missing (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unknown weights (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        details.append(
            f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    raise ValueError(
        "The checkpoint does not fit this model: " + "; ".join(details) + ". It was trained with another "
        "model config; load it with its own config (omitting model options lets the checkpoint's apply)."
    )


# -------------------------------------------------------------------------------- the frozen BEiT-3 file


def load_backbone_file(segmenter: OMTSeg, path: str | Path) -> dict[str, str]:
    """Load an official BEiT-3 ``.pth`` into the segmenter's trunk; returns its ``{"path", "sha256"}``.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"BEiT-3 weights not found: {path}. Give the official .pth file (backbone_weights) "
            "or null to start from random weights."
        )
    segmenter.load_backbone_weights(str(path))
    return {"path": str(path.resolve()), "sha256": file_sha256(path)}


def restore_backbone(
    segmenter: OMTSeg, source: Mapping[str, str], *, loaded: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Load the BEiT-3 file a checkpoint names into the segmenter's trunk, after checking its sha256.

    Args:
        segmenter: the model to load into.
        source: the checkpoint's ``omtseg_backbone`` entry.
        loaded: the file already loaded into ``segmenter`` (at construction), if any; when its sha256 is
            the checkpoint's, nothing is read again.

    Returns:
        The source now loaded.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file differs from the one the checkpoint was trained with.
    """
    if loaded is not None and loaded["sha256"] == source["sha256"]:
        return dict(loaded)
    path = Path(source["path"])
    if not path.is_file():
        raise FileNotFoundError(
            f"The checkpoint's frozen BEiT-3 weights come from {path}, which is missing. Restore it "
            f"(sha256 {source['sha256']}) or set model.backbone_weights to a copy of it."
        )
    digest = file_sha256(path)
    if digest != source["sha256"]:
        raise ValueError(
            f"{path} differs from the BEiT-3 file this checkpoint was trained with (sha256 {digest}, "
            f"expected {source['sha256']}); use the original weights file."
        )
    segmenter.load_backbone_weights(str(path))
    return {"path": str(path), "sha256": digest}


def frozen_backbone_keys(segmenter: OMTSeg, prefix: str = SEGMENTER_PREFIX) -> set[str]:
    """State-dict keys (under ``prefix``) of the trunk's frozen weights, which a backbone file restores."""
    found = [name for name, m in segmenter.named_modules() if isinstance(m, BEiT3)]
    if len(found) != 1:
        raise ValueError(f"Expected exactly one BEiT3 inside the model, found {len(found)}: {found}.")
    trunk = segmenter.get_submodule(found[0])
    return {f"{prefix}{found[0]}.{n}" for n, p in trunk.named_parameters() if not p.requires_grad}


# ------------------------------------------------------------------------------- segmenter checkpoints


def add_segmenter_entries(
    checkpoint: dict[str, Any],
    segmenter: OMTSeg,
    backbone_source: Mapping[str, str] | None,
    prefix: str = SEGMENTER_PREFIX,
    eval_size: int | None = None,
) -> None:
    """Complete a checkpoint being saved: format version, and the backbone file in place of its weights.

    Args:
        checkpoint: the Lightning checkpoint dict (``state_dict`` holds the segmenter under ``prefix``).
        segmenter: the model saved.
        backbone_source: the BEiT-3 file loaded into it, or None for a randomly initialised trunk.
        prefix: the segmenter's key prefix in ``state_dict``.
        eval_size: the training data's evaluation long side (pixels), kept as the default image size.
    """
    checkpoint[FORMAT_KEY] = FORMAT_VERSION
    checkpoint[TRAINED_NAMES_KEY] = sorted(segmenter.trained_names)
    if eval_size is not None:
        checkpoint[EVAL_SIZE_KEY] = int(eval_size)
    if backbone_source is None:
        return  # random-init backbone: its weights exist nowhere else, keep them
    checkpoint[BACKBONE_KEY] = dict(backbone_source)
    frozen = frozen_backbone_keys(segmenter, prefix)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}


def complete_segmenter_state(
    checkpoint: dict[str, Any],
    segmenter: OMTSeg,
    *,
    loaded: Mapping[str, str] | None = None,
    prefix: str = SEGMENTER_PREFIX,
) -> dict[str, str] | None:
    """Make a checkpoint being loaded whole again: restore its BEiT-3 file and put the frozen weights back.

    After this, ``checkpoint["state_dict"]`` holds every weight of the segmenter under ``prefix``.

    Args:
        checkpoint: the checkpoint dict (changed in place).
        segmenter: the model it is loaded into; its trunk receives the backbone file.
        loaded: the backbone file already in ``segmenter`` (see :func:`restore_backbone`).
        prefix: the segmenter's key prefix in ``state_dict``.

    Returns:
        The backbone source now loaded (``loaded`` when the checkpoint names none).

    Raises:
        ValueError: the checkpoint was not written by omtseg, or its backbone file differs.
        FileNotFoundError: its backbone file is missing.
    """
    if FORMAT_KEY not in checkpoint:
        raise ValueError(f"This checkpoint {_NOT_OMTSEG}")
    segmenter.trained_names = frozenset(checkpoint.get(TRAINED_NAMES_KEY, ()))
    source = checkpoint.get(BACKBONE_KEY)
    if source is None:
        return None if loaded is None else dict(loaded)
    restored = restore_backbone(segmenter, source, loaded=loaded)
    own = segmenter.state_dict()
    state = checkpoint["state_dict"]
    for key in frozen_backbone_keys(segmenter, prefix):
        state.setdefault(key, own[key[len(prefix) :]])
    return restored


def load_segmenter(segmenter: OMTSeg, path: str | Path) -> None:
    """Load an ``omtseg fit`` checkpoint's segmenter weights into ``segmenter`` (outside Lightning).

    A checkpoint that stored its frozen BEiT-3 as a file reference gets the backbone from that file first,
    checked by sha256 as when Lightning loads it.

    Raises:
        FileNotFoundError: the checkpoint (or the BEiT-3 file it refers to) is missing.
        ValueError: not an omtseg checkpoint, a different BEiT-3 file, or weights that do not fit this
            segmenter's configuration.
    """
    checkpoint = read_checkpoint(path)
    complete_segmenter_state(checkpoint, segmenter)
    n = len(SEGMENTER_PREFIX)
    state = {k[n:]: v for k, v in checkpoint["state_dict"].items() if k.startswith(SEGMENTER_PREFIX)}
    check_state_fits(state, segmenter.state_dict())
    segmenter.load_state_dict(state)


# ------------------------------------------------------------------------------- captioner checkpoints


def segmenter_from_checkpoint(path: str | Path) -> OMTSeg:
    """The segmenter of an ``omtseg fit`` checkpoint, built from its saved config, weights loaded, for a
    captioner to train or run over.

    Raises:
        FileNotFoundError: the checkpoint (or the BEiT-3 file it refers to) is missing.
        ValueError: not an omtseg checkpoint, or one without its saved model config.
    """
    check_checkpoint(path, need_model_config=True)
    model = read_checkpoint(path, header_only=True)["hyper_parameters"]["model"]
    expected = f"{OMTSeg.__module__}.{OMTSeg.__name__}"
    if not isinstance(model, dict) or model.get("class_path") != expected:
        found = model.get("class_path") if isinstance(model, dict) else model
        raise ValueError(f"{path} holds a {found!r} model, not an {expected}; give a segmenter checkpoint.")
    segmenter = OMTSeg(**(model.get("init_args") or {}))
    load_segmenter(segmenter, path)
    return segmenter


def _captioner_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``config`` with its language model directory relative to ``folder`` when it lies inside it."""
    lm = Path(config["language_model"]).resolve()
    if lm.is_relative_to(folder.resolve()):
        lm = lm.relative_to(folder.resolve())
    return {**config, "language_model": str(lm)}


def add_captioner_entries(checkpoint: dict[str, Any], config: Mapping[str, Any], prefix: str) -> None:
    """Make a checkpoint being saved (a Lightning one) a captioner checkpoint too, for :func:`load_captioner`.

    Args:
        checkpoint: the checkpoint dict; its ``state_dict`` holds the captioner's weights under ``prefix``.
        config: the keyword arguments that rebuild the captioner; ``language_model`` is stored as an
            absolute path (the checkpoint's own folder is not known here).
        prefix: the captioner's key prefix in ``state_dict`` (``"captioner."``).
    """
    assert any(k.startswith(prefix) for k in checkpoint["state_dict"]), f"no weights under {prefix!r}"
    checkpoint[CAPTIONER_KEY] = CAPTIONER_FORMAT
    checkpoint["config"] = {**config, "language_model": str(Path(config["language_model"]).resolve())}
    checkpoint[CAPTIONER_PREFIX_KEY] = prefix


def save_captioner(captioner: SegmentCaptioner, config: dict[str, Any], path: str | Path) -> Path:
    """Write a captioner checkpoint for :func:`load_captioner` (``omtseg predict --captioner_ckpt``).

    Args:
        captioner: the trained captioner.
        config: the keyword arguments it was built with. ``language_model`` names the directory its
            tokenizer and architecture are read from at load time (the weights are saved here); one inside
            the checkpoint's folder is stored relative to it, so the folder can move as a whole.
        path: the ``.ckpt`` file to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = _captioner_config(config, path.parent)
    state = captioner.state_dict()
    torch.save({CAPTIONER_KEY: CAPTIONER_FORMAT, "config": config, "state_dict": state}, path)
    return path


def read_captioner(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The arguments and weights of a captioner checkpoint (:func:`save_captioner`'s, or a Lightning one
    with :func:`add_captioner_entries`), read weights-only; a relative language model directory is made
    relative to the checkpoint's folder, where :func:`save_captioner` put it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a captioner checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Captioner checkpoint not found: {path}; give a file written by save_captioner."
        )
    checkpoint = load_weights_only(path, fix="Give a captioner checkpoint written by save_captioner.")
    if not isinstance(checkpoint, dict) or CAPTIONER_KEY not in checkpoint:
        raise ValueError(
            f"{path} is not a captioner checkpoint (no '{CAPTIONER_KEY}' entry); give one that `omtseg fit "
            "--config configs/caption/<recipe>.yaml` or omtseg.checkpoint.save_captioner wrote (the demo "
            "saves captioner.ckpt)."
        )
    config = checkpoint["config"]
    lm = Path(config["language_model"])
    config = {**config, "language_model": str(lm if lm.is_absolute() else path.parent / lm)}
    prefix = checkpoint.get(CAPTIONER_PREFIX_KEY, "")
    n = len(prefix)
    state = {k[n:]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return config, state


def load_captioner(path: str | Path) -> tuple[SegmentCaptioner, dict[str, Any]]:
    """Rebuild a captioner saved by :func:`save_captioner`, or by ``omtseg fit`` of a captioner config (a
    Lightning checkpoint with :func:`add_captioner_entries`), in eval mode.

    Returns:
        The captioner and the keyword arguments it was built with.

    Raises:
        FileNotFoundError: the checkpoint or the language model directory it names is missing.
        ValueError: the file is not a captioner checkpoint.
    """
    config, state = read_captioner(path)
    captioner = SegmentCaptioner(**config)
    captioner.load_state_dict(state)
    return captioner.eval(), config


def load_captioner_weights(captioner: SegmentCaptioner, path: str | Path) -> None:
    """Start ``captioner`` from the weights of a captioner checkpoint (SCA's weak pre-training, then VG).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a captioner checkpoint, or weights of another architecture.
    """
    _, state = read_captioner(path)
    check_state_fits(state, captioner.state_dict())
    captioner.load_state_dict(state)
