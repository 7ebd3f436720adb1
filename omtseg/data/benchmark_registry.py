"""The registry of zero-shot benchmarks: where each one lies under the datasets root, its ignore value and its
vocabulary. The one declaration of the layouts: the datasets read them and ``omtseg prepare`` writes them.

Class lists are text assets in ``omtseg/assets/vocabularies/`` (sources and license in the NOTICE.md beside
them): one class per line in label order, tab-separated columns, the class's synonyms comma-separated. A model
reads every synonym as a prompt and combines their scores into the class score (max over synonyms).

Importing this module reads no file: :data:`BENCHMARKS` holds paths and names only, and
:func:`zero_shot_vocabulary` reads an asset on first use (then caches it).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from omtseg.data.vocabulary import read_vocabulary_tsv
from omtseg.types import Vocabulary

DATASETS_ENV = "OMTSEG_DATASETS"
"""Environment variable naming the datasets root; ``data/`` (relative to the working directory) when unset."""

SPLIT_DIRS: dict[str, str] = {"train": "training", "val": "validation"}
"""Split name -> folder name of the detectron2-style layouts."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One zero-shot benchmark in the layout the detectron2-based open-vocabulary projects prepare.

    Path templates are relative to the datasets root; ``{split_dir}`` is ``training``/``validation`` and
    ``{split}`` is ``train``/``val``.

    Attributes:
        name: registry key (``"ade20k_847"``).
        title: name in papers (``"ADE20K-847"``).
        vocabulary_file: asset file name in ``omtseg/assets/vocabularies/``.
        num_classes: K, the number of classes evaluated.
        images: folder of the ``.jpg`` images.
        labels: folder of the semantic label maps (one per image, same stem).
        label_suffix: ``.png`` (8-bit) or ``.tif`` (uint16).
        ignore_value: label value that no metric counts (255 or 65535); read as ``IGNORE_INDEX``.
        panoptic_json: COCO-panoptic JSON (panoptic benchmarks only).
        panoptic_dir: folder of the panoptic PNGs (panoptic benchmarks only).
        instance_json: COCO-instances JSON of the thing segments (written by ``omtseg prepare`` beside the
            panoptic layout, as Mask2Former's preparation does; AP is computed from the panoptic files).
        prepare: the ``omtseg prepare`` benchmark that builds this layout from the official downloads.
    """

    name: str
    title: str
    vocabulary_file: str
    num_classes: int
    images: str
    labels: str
    label_suffix: str
    ignore_value: int
    panoptic_json: str | None = None
    panoptic_dir: str | None = None
    instance_json: str | None = None
    prepare: str = ""

    @property
    def is_panoptic(self) -> bool:
        """True when the benchmark has panoptic ground truth (PQ) besides the semantic maps (mIoU)."""
        return self.panoptic_json is not None

    def path(self, template: str, split: str, root: str | os.PathLike[str] | None = None) -> Path:
        """A path template of this benchmark for ``split`` (``"train"``/``"val"``) under ``root``."""
        if split not in SPLIT_DIRS:
            raise ValueError(f"Unknown split {split!r} for {self.name}; use one of {sorted(SPLIT_DIRS)}.")
        return datasets_root(root) / template.format(split=split, split_dir=SPLIT_DIRS[split])


_ADE150 = BenchmarkSpec(
    name="ade20k_150",
    title="ADE20K-150",
    vocabulary_file="ade20k_150.txt",
    num_classes=150,
    images="ADEChallengeData2016/images/{split_dir}",
    labels="ADEChallengeData2016/annotations_detectron2/{split_dir}",
    label_suffix=".png",
    ignore_value=255,
    prepare="ade20k_150",
)

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "ade20k_150": _ADE150,
    "ade20k_150_panoptic": replace(
        _ADE150,
        name="ade20k_150_panoptic",
        title="ADE20K-150 panoptic",
        panoptic_json="ADEChallengeData2016/ade20k_panoptic_{split}.json",
        panoptic_dir="ADEChallengeData2016/ade20k_panoptic_{split}",
        instance_json="ADEChallengeData2016/ade20k_instance_{split}.json",
    ),
    "ade20k_847": BenchmarkSpec(
        name="ade20k_847",
        title="ADE20K-847",
        vocabulary_file="ade20k_847.txt",
        num_classes=847,
        images="ADE20K_2021_17_01/images_detectron2/{split_dir}",
        labels="ADE20K_2021_17_01/annotations_detectron2/{split_dir}",
        label_suffix=".tif",
        ignore_value=65535,
        prepare="ade20k_847",
    ),
    "pascal_context_59": BenchmarkSpec(
        name="pascal_context_59",
        title="Pascal Context-59",
        vocabulary_file="pascal_context_59.txt",
        num_classes=59,
        labels="pascal_ctx_d2/annotations_ctx59/{split_dir}",
        label_suffix=".png",
        ignore_value=255,
        prepare="pascal_context_59",
        images="pascal_ctx_d2/images/{split_dir}",
    ),
    "pascal_context_459": BenchmarkSpec(
        name="pascal_context_459",
        title="Pascal Context-459",
        vocabulary_file="pascal_context_459.txt",
        num_classes=459,
        labels="pascal_ctx_d2/annotations_ctx459/{split_dir}",
        label_suffix=".tif",
        ignore_value=65535,
        prepare="pascal_context_459",
        images="pascal_ctx_d2/images/{split_dir}",
    ),
    "pascal_voc_20": BenchmarkSpec(
        name="pascal_voc_20",
        title="Pascal VOC-20",
        vocabulary_file="pascal_voc_20.txt",
        num_classes=20,
        images="pascal_voc_d2/images/{split_dir}",
        labels="pascal_voc_d2/annotations_pascal20/{split_dir}",
        label_suffix=".png",
        ignore_value=255,
        prepare="pascal_voc_20",
    ),
}
"""Benchmark name -> :class:`BenchmarkSpec`. A plain dict: add an entry to register a benchmark."""


def datasets_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The datasets root: ``root`` if given, else ``$OMTSEG_DATASETS``, else ``data/``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(DATASETS_ENV) or "data")


def benchmark_spec(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` registered as ``name``, with an error listing the known names."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown zero-shot benchmark {name!r}; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


def _asset(file_name: str) -> Path:
    return Path(str(resources.files("omtseg") / "assets" / "vocabularies" / file_name))


@functools.cache
def zero_shot_vocabulary(name: str) -> Vocabulary:
    """The vocabulary of benchmark ``name`` (a key of :data:`BENCHMARKS`), K classes in label order.

    Raises:
        ValueError: unknown name, or the asset does not hold ``num_classes`` classes.
    """
    spec = benchmark_spec(name)
    vocabulary = read_vocabulary_tsv(_asset(spec.vocabulary_file))
    if len(vocabulary) != spec.num_classes:
        raise ValueError(
            f"{spec.vocabulary_file} lists {len(vocabulary)} classes, {spec.title} has {spec.num_classes}; "
            "the asset is damaged, restore it from the package."
        )
    return vocabulary


def ade20k_instance_labels() -> dict[int, int]:
    """ADE20K instance-challenge class (1..100, the R channel of ``annotations_instance`` PNGs) -> label.

    Instance class j is the j-th thing class of ADE20K-150 in label order (Mask2Former's
    ``ade20k_instance_catid_mapping.txt`` numbers them so).
    """
    vocabulary = zero_shot_vocabulary("ade20k_150")
    things = [k for k, thing in enumerate(vocabulary.is_thing) if thing]
    return {j: k for j, k in enumerate(things, start=1)}
