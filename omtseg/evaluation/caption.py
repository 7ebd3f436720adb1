"""Caption metrics as the COCO caption evaluation computes them: BLEU-1..4 and CIDEr-D (ours), METEOR and
SPICE (pycocoevalcap's Java tools, only where they are installed).

Region-captioning papers (SCA, GRiT, GPT4RoI) report CIDEr-D and METEOR on Visual Genome with the coco-caption
code, so the definitions follow it, quirks included:

- BLEU is corpus level: clipped n-gram counts and lengths are summed over all captions first; the reference
  length of a caption is the closest one (the shorter on ties); precisions are smoothed with 1e-15 / 1e-9, so
  a caption with no 4-gram scores a tiny, not zero, BLEU-4.
- CIDEr-D: per n (1..4), tf-idf vectors with document frequencies counted over the images' reference sets of
  the evaluated corpus, the candidate's weights clipped by the reference's, a Gaussian penalty on the
  difference in length (sigma 6; lengths counted in bigrams, as the reference code does), averaged over n
  and references, times 10.

Tokenisation is lower-casing and splitting into words (punctuation dropped); coco-caption runs the Stanford
PTB tokenizer, which also drops punctuation but splits clitics ("don't" -> "do n't"), a rare difference in
region captions.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BLEU smoothing
JAVA_METRICS = ("meteor", "spice")
K = TypeVar("K", bound=Hashable)  # region id type


def tokenize(caption: str) -> list[str]:
    """Lower-cased words of a caption, punctuation dropped."""
    return _WORD.findall(caption.lower())


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _check(predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]) -> None:
    if set(predictions) != set(references):
        missing = sorted(map(str, set(references) - set(predictions)))[:5]
        extra = sorted(map(str, set(predictions) - set(references)))[:5]
        raise ValueError(
            f"Predictions and references must cover the same ids (missing predictions: {missing}, "
            f"predictions without references: {extra}); caption every evaluated region once."
        )
    empty = [k for k, refs in references.items() if len(refs) == 0]
    if empty:
        raise ValueError(f"Regions {empty[:5]} have no reference caption; drop them or add references.")


def bleu(predictions: Mapping[K, str], references: Mapping[K, Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..``max_n`` (coco-caption's definition, see the module docstring).

    Args:
        predictions: one caption per id.
        references: one or more reference captions per id.
        max_n: longest n-gram.

    Returns:
        ``[BLEU-1, ..., BLEU-max_n]``; zeros for an empty corpus.
    """
    _check(predictions, references)
    if not predictions:
        return [0.0] * max_n
    correct, guess = [0] * max_n, [0] * max_n
    test_len = ref_len = 0
    for key, caption in predictions.items():
        words = tokenize(caption)
        refs = [tokenize(r) for r in references[key]]
        test_len += len(words)
        ref_len += min((len(r) for r in refs), key=lambda n: (abs(n - len(words)), n))
        for n in range(1, max_n + 1):
            most: Counter[tuple[str, ...]] = Counter()
            for r in refs:
                most |= _ngrams(r, n)  # per n-gram, its largest count in any one reference
            counts = _ngrams(words, n)
            correct[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            guess[n - 1] += max(len(words) - n + 1, 0)
    scores, product = [], 1.0
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    for n in range(max_n):
        product *= (correct[n] + _TINY) / (guess[n] + _SMALL)
        scores.append(brevity * product ** (1 / (n + 1)))
    return scores


def _tfidf(
    words: list[str], df: Counter[tuple[str, ...]], log_n: float, max_n: int
) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
    """Per n, the tf-idf vector and its norm; and the length (in bigrams, as coco-caption counts it)."""
    vecs, norms = [], []
    for n in range(1, max_n + 1):
        vec = {g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in _ngrams(words, n).items()}
        vecs.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vecs, norms, max(len(words) - 1, 0)


def cider_d(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    max_n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, dict[K, float]]:
    """CIDEr-D of a corpus and of each caption (coco-caption's definition, see the module docstring).

    Document frequencies come from the references of exactly these ids, so scores depend on the corpus:
    compare numbers computed over the same evaluation set.

    Returns:
        The corpus mean and the per-id scores; 0.0 and ``{}`` for an empty corpus.
    """
    _check(predictions, references)
    if not predictions:
        return 0.0, {}
    refs = {k: [tokenize(r) for r in v] for k, v in references.items()}
    df: Counter[tuple[str, ...]] = Counter()
    for ref_set in refs.values():
        df.update({g for r in ref_set for n in range(1, max_n + 1) for g in _ngrams(r, n)})
    log_n = math.log(float(len(refs)))
    per_id: dict[K, float] = {}
    for key, caption in predictions.items():
        h_vecs, h_norms, h_len = _tfidf(tokenize(caption), df, log_n, max_n)
        total = 0.0
        for ref in refs[key]:
            r_vecs, r_norms, r_len = _tfidf(ref, df, log_n, max_n)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for hv, rv, hn, rn in zip(h_vecs, r_vecs, h_norms, r_norms, strict=True):
                dot = sum(min(v, rv.get(g, 0.0)) * rv.get(g, 0.0) for g, v in hv.items())
                if hn != 0 and rn != 0:
                    dot /= hn * rn
                total += dot * penalty
        per_id[key] = 10.0 * total / max_n / len(refs[key])
    return sum(per_id.values()) / len(per_id), per_id


def java_metrics_status() -> dict[str, str | None]:
    """Per Java metric (METEOR, SPICE), None when it can run here, else what is missing and how to add it."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        why = "pycocoevalcap is not installed (pip install pycocoevalcap; it also needs Java)"
        return dict.fromkeys(JAVA_METRICS, why)
    if shutil.which("java") is None:
        return dict.fromkeys(JAVA_METRICS, "no `java` on PATH (install a Java 8+ runtime)")
    status: dict[str, str | None] = {"meteor": None, "spice": None}
    spec = importlib.util.find_spec("pycocoevalcap")
    assert spec is not None and spec.origin is not None
    # SPICE downloads Stanford CoreNLP on first use; without the jars (and no network) it cannot run.
    if not list((Path(spec.origin).parent / "spice" / "lib").glob("stanford-corenlp-*.jar")):
        status["spice"] = (
            "SPICE's Stanford CoreNLP jars are missing (run pycocoevalcap's get_stanford_models)"
        )
    return status


@dataclass
class CaptionEvaluation:
    """Scores of a captioned corpus.

    Attributes:
        scores: ``bleu_1``..``bleu_4``, ``cider_d`` and, where they could run, ``meteor`` and ``spice``.
        per_caption_cider_d: CIDEr-D of each id.
        unavailable: metric -> why it was not computed (missing Java tools).
    """

    scores: dict[str, float]
    per_caption_cider_d: dict[Any, float]
    unavailable: dict[str, str] = field(default_factory=dict)


def gather_captions(
    predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]
) -> tuple[dict[K, str], dict[K, Sequence[str]]]:
    """Every process's captions, merged by region id, when ``torch.distributed`` runs several processes
    (a collective call: every process must make it); this process's otherwise.

    Keyed by region, a region that a padding sampler gave to two processes counts once, so the metrics of
    :func:`evaluate_captions` equal one process's.
    """
    import torch.distributed as dist

    merged_predictions, merged_references = dict(predictions), dict(references)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return merged_predictions, merged_references
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (merged_predictions, merged_references))
    for part_predictions, part_references in parts:
        merged_predictions.update(part_predictions)
        merged_references.update(part_references)
    return merged_predictions, merged_references


def evaluate_captions(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    java_metrics: bool = True,
) -> CaptionEvaluation:
    """BLEU-1..4 and CIDEr-D, plus METEOR and SPICE when pycocoevalcap and Java are present.

    Args:
        predictions: one caption per region id.
        references: the reference captions per region id (same ids).
        java_metrics: try METEOR and SPICE; what cannot run is listed in ``unavailable``, never an error.
    """
    scores = {f"bleu_{n}": s for n, s in enumerate(bleu(predictions, references), start=1)}
    scores["cider_d"], per_id = cider_d(predictions, references)
    unavailable: dict[str, str] = {}
    if java_metrics and predictions:
        for name, why in java_metrics_status().items():
            if why is None:
                scores[name] = _java_metric(name, predictions, references)
            else:
                unavailable[name] = why
    return CaptionEvaluation(scores=scores, per_caption_cider_d=per_id, unavailable=unavailable)


def _java_metric(name: str, predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]) -> float:
    """METEOR or SPICE through pycocoevalcap, on our tokenisation (as words joined by spaces)."""
    if name == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor as Scorer
    else:
        from pycocoevalcap.spice.spice import Spice as Scorer
    keys = list(predictions)
    res = {i: [" ".join(tokenize(predictions[k]))] for i, k in enumerate(keys)}
    gts = {i: [" ".join(tokenize(r)) for r in references[k]] for i, k in enumerate(keys)}
    score, _ = Scorer().compute_score(gts, res)
    return float(score)
