"""Caption metrics with the COCO caption evaluation's protocol (pycocoevalcap, the code every captioning paper
reports with): PTB tokenization, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and, where its parser is supplied, SPICE.

Region-captioning papers (SCA, GRiT, GPT4RoI) report CIDEr-D and METEOR on Visual Genome with that code, so
:func:`evaluate_captions` follows it, quirks included:

- Tokens come from Stanford's PTB tokenizer (pycocoevalcap's bundled jar, lower-cased, punctuation tokens
  dropped): "A man's T-shirt." -> "a man 's t-shirt". Without Java, :func:`tokenize` approximates it and every
  result says "not the official tokenizer": such numbers are not comparable with published ones.
- BLEU is corpus level: clipped n-gram counts and lengths are summed over all captions first; the reference
  length of a caption is the closest one (the shorter on ties); precisions are smoothed with 1e-15 / 1e-9, so
  a caption with no 4-gram scores a tiny, not zero, BLEU-4.
- ROUGE-L: per caption, the longest common subsequence's best precision and best recall over the references
  (each maximised on its own), combined as an F-measure with beta 1.2; the corpus score is the mean.
- CIDEr-D: per n (1..4), tf-idf vectors with document frequencies counted over the images' reference sets of
  the evaluated corpus, the candidate's weights clipped by the reference's, a Gaussian penalty on the
  difference in length (sigma 6; lengths counted in bigrams, as the reference code does), averaged over n
  and references, times 10.
- METEOR and SPICE are pycocoevalcap's Java programs (:mod:`omtseg.evaluation.caption_java`).

BLEU, ROUGE-L and CIDEr-D are computed here on the tokenized captions; on the same tokens they equal
pycocoevalcap's (a test checks it against the installed package).
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omtseg.evaluation import caption_java

# Our approximation of the PTB tokenizer: clitics split off ("do n't", "man 's"), hyphenated words and decimal
# numbers kept whole, any letters (not only a-z), brackets as PTB names them ("-lrb-", kept by coco-caption),
# & % $ # as tokens, other punctuation dropped.
_WORD = re.compile(r"\w+?(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|-l[rsc]b-|-r[rsc]b-|[&%$#]")
_BRACKETS = str.maketrans(
    {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
)
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BLEU smoothing
_ROUGE_BETA = 1.2  # coco-caption's ROUGE-L recall weight
NOT_OFFICIAL = "not the official tokenizer"
K = TypeVar("K", bound=Hashable)  # region id type


def tokenize(caption: str) -> list[str]:
    """Lower-cased PTB-like tokens of a caption, punctuation dropped (used only where Java cannot run)."""
    return _WORD.findall(caption.lower().translate(_BRACKETS))


def _words(tokenized: str) -> list[str]:
    return tokenized.split()


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
        predictions: one tokenized caption per id (words separated by spaces, see :func:`tokenize_captions`).
        references: one or more tokenized reference captions per id.
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
        words = _words(caption)
        refs = [_words(r) for r in references[key]]
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
    compare numbers computed over the same evaluation set. Captions are tokenized, as in :func:`bleu`.

    Returns:
        The corpus mean and the per-id scores; 0.0 and ``{}`` for an empty corpus.
    """
    _check(predictions, references)
    if not predictions:
        return 0.0, {}
    refs = {k: [_words(r) for r in v] for k, v in references.items()}
    df: Counter[tuple[str, ...]] = Counter()
    for ref_set in refs.values():
        df.update({g for r in ref_set for n in range(1, max_n + 1) for g in _ngrams(r, n)})
    log_n = math.log(float(len(refs)))
    per_id: dict[K, float] = {}
    for key, caption in predictions.items():
        h_vecs, h_norms, h_len = _tfidf(_words(caption), df, log_n, max_n)
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


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(
    predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]
) -> tuple[float, dict[K, float]]:
    """ROUGE-L of a corpus and of each caption (coco-caption's definition, see the module docstring).

    Captions are tokenized, as in :func:`bleu`; an empty caption scores 0.

    Returns:
        The mean over ids and the per-id scores; 0.0 and ``{}`` for an empty corpus.
    """
    _check(predictions, references)
    per_id: dict[K, float] = {}
    for key, caption in predictions.items():
        words = _words(caption)
        precision = recall = 0.0
        for ref in map(_words, references[key]):
            common = _lcs(ref, words)
            precision = max(precision, common / max(len(words), 1))
            recall = max(recall, common / max(len(ref), 1))
        per_id[key] = (
            (1 + _ROUGE_BETA**2) * precision * recall / (recall + _ROUGE_BETA**2 * precision)
            if precision > 0 and recall > 0
            else 0.0
        )
    return (sum(per_id.values()) / len(per_id) if per_id else 0.0), per_id


def tokenize_captions(
    predictions: Mapping[K, str], references: Mapping[K, Sequence[str]], *, official: bool = True
) -> tuple[dict[K, str], dict[K, list[str]], str | None]:
    """Tokenize a corpus: with the PTB tokenizer (one Java call) where it runs, else with :func:`tokenize`.

    Args:
        predictions: one raw caption per id.
        references: raw reference captions per id.
        official: use the PTB tokenizer when it can run here.

    Returns:
        Tokenized predictions and references (words joined by single spaces), and None when the PTB
        tokenizer ran, else why not (what the results must then be labelled with).
    """
    why = caption_java.tools_status()["ptb_tokenizer"] if official else "Java tools not requested"
    if why is not None:
        predicted = {k: " ".join(tokenize(c)) for k, c in predictions.items()}
        return predicted, {k: [" ".join(tokenize(r)) for r in v] for k, v in references.items()}, why
    keys = list(predictions)
    flat = [predictions[k] for k in keys] + [r for k in keys for r in references[k]]
    tokens = iter(caption_java.ptb_tokenize(flat))
    predicted = {k: next(tokens) for k in keys}
    return predicted, {k: [next(tokens) for _ in references[k]] for k in keys}, None


@dataclass
class CaptionEvaluation:
    """Scores of a captioned corpus.

    Attributes:
        scores: ``bleu_1``..``bleu_4``, ``rouge_l``, ``cider_d`` and, where they could run, ``meteor`` and
            ``spice``.
        per_caption_cider_d: CIDEr-D of each id.
        protocol: ``"official"`` (pycocoevalcap's PTB tokenizer ran), else ``"not the official tokenizer:
            <why>"``; scores under the latter are not comparable with published ones.
        unavailable: metric -> why it was not computed (missing Java tools, a Java tool that failed).
    """

    scores: dict[str, float]
    per_caption_cider_d: dict[Any, float]
    protocol: str = "official"
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def official(self) -> bool:
        """Whether the scores follow the COCO caption evaluation's protocol (PTB tokens)."""
        return self.protocol == "official"

    def to_json(self) -> dict[str, Any]:
        """Scores, protocol and unavailable metrics, ready for ``json.dump``."""
        return {"scores": dict(self.scores), "protocol": self.protocol, "unavailable": dict(self.unavailable)}

    def summary(self) -> str:
        """One line: the scores, then the protocol and what could not be computed."""
        parts = [f"{name} {value:.4f}" for name, value in self.scores.items()]
        parts.append(f"[{self.protocol}]")
        parts += [f"{name}: unavailable ({why})" for name, why in self.unavailable.items()]
        return ", ".join(parts)


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
    """BLEU-1..4, ROUGE-L and CIDEr-D on PTB tokens, plus METEOR and SPICE, as pycocoevalcap computes them.

    Args:
        predictions: one raw caption per region id.
        references: the raw reference captions per region id (same ids).
        java_metrics: run pycocoevalcap's Java tools (PTB tokenizer, METEOR, SPICE) where they can run; what
            cannot run is listed in ``unavailable`` (never an error), and without the PTB tokenizer the result
            is labelled "not the official tokenizer".
    """
    _check(predictions, references)
    status = (
        caption_java.tools_status() if java_metrics else dict.fromkeys(caption_java.TOOLS, "not requested")
    )
    unavailable: dict[str, str] = {}
    try:
        predicted, referenced, why = tokenize_captions(predictions, references, official=java_metrics)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        predicted, referenced, _ = tokenize_captions(predictions, references, official=False)
        why = f"the PTB tokenizer failed ({error})"
    scores = {f"bleu_{n}": s for n, s in enumerate(bleu(predicted, referenced), start=1)}
    scores["rouge_l"], _ = rouge_l(predicted, referenced)
    scores["cider_d"], per_id = cider_d(predicted, referenced)
    for name, run in (("meteor", caption_java.meteor), ("spice", caption_java.spice)):
        reason = status[name]
        if reason is None and predictions:
            try:
                scores[name], _ = run(predicted, referenced)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as error:
                reason = f"{name} failed: {error}"
        if reason is not None:
            unavailable[name] = reason
    protocol = "official" if why is None else f"{NOT_OFFICIAL}: {why}"
    return CaptionEvaluation(
        scores=scores, per_caption_cider_d=per_id, protocol=protocol, unavailable=unavailable
    )
