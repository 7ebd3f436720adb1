"""Caption metrics against values computed by hand (coco-caption's definitions); against pycocoevalcap itself
in test_caption_official.py."""

from __future__ import annotations

import math
import multiprocessing as mp
import socket
from typing import Any

import pytest
import torch.distributed as dist

from omtseg.evaluation.caption import (
    NOT_OFFICIAL,
    bleu,
    cider_d,
    evaluate_captions,
    gather_captions,
    rouge_l,
    tokenize,
)


def test_tokenize_lowercases_and_drops_punctuation_as_ptb() -> None:
    assert tokenize("A Red ball, on the grass.") == ["a", "red", "ball", "on", "the", "grass"]
    assert tokenize("the dog's bowl isn't (Café) T-shirt 3.5!") == [
        "the", "dog", "'s", "bowl", "is", "n't", "-lrb-", "café", "-rrb-", "t-shirt", "3.5"
    ]  # fmt: skip


def test_bleu_by_hand() -> None:
    # candidate "a red ball on the grass" (6 words); references of 5 and 7 words.
    # 1-grams: all 6 appear ("the" is clipped to its max count in one reference, 2 >= 1)      -> 6/6
    # 2-grams: a red, red ball, ball on (ref 1); on the, the grass (ref 2)                  -> 5/5
    # 3-grams: a red ball, red ball on (ref 1), on the grass (ref 2); "ball on the" nowhere  -> 3/4
    # 4-grams: only "a red ball on" (ref 1)                                                  -> 1/3
    # closest reference length: 5 and 7 are both 1 away, the shorter wins -> 5 < 6, no brevity penalty.
    # BLEU-3 = (1 * 1 * 3/4)^(1/3), BLEU-4 = (3/4 * 1/3)^(1/4) = 0.25^0.25.
    preds = {1: "a red ball on the grass"}
    refs = {1: ["a red ball on grass", "the red ball lies on the grass"]}
    expected = [1.0, 1.0, 0.75 ** (1 / 3), 0.25**0.25]
    assert bleu(preds, refs) == pytest.approx(expected, rel=1e-6)


def test_bleu_brevity_penalty_and_smoothing_by_hand() -> None:
    # "a red ball" vs "a red ball on grass": precisions 1, 1, 1; no 4-gram: coco-caption's smoothing gives
    # (0 + 1e-15) / (0 + 1e-9) = 1e-6. Brevity penalty exp(1 - 5/3).
    bp = math.exp(1 - 5 / 3)
    got = bleu({"x": "a red ball"}, {"x": ["a red ball on grass"]})
    assert got == pytest.approx([bp, bp, bp, bp * 1e-6**0.25], rel=1e-6)


def test_bleu_is_corpus_level() -> None:
    # Counts add up before dividing: 1-grams (3 + 1) / (3 + 2), lengths 5 vs references 3 + 2 -> no penalty.
    preds = {1: "a red ball", 2: "blue cone"}
    refs = {1: ["a red ball"], 2: ["blue box"]}
    assert bleu(preds, refs, max_n=1) == pytest.approx([4 / 5], rel=1e-6)


def test_cider_d_on_a_three_image_corpus_by_hand() -> None:
    # References: I1 "red ball", I2 "blue box", I3 "red box"; N = 3 images, idf(g) = log 3 - log(max(1, df)).
    # df: red 2, box 2, every other n-gram 1 (or 0 for n-grams in no reference).
    # Let a = log 3 (df 0 or 1) and h = log 1.5 (df 2).
    # I1 "red ball" equals its reference: cosine 1 for n = 1, 2, nothing for n = 3, 4 -> 10 * (1 + 1) / 4 = 5.
    # I2 "blue ball" vs "blue box": n=1 candidate (blue a, ball a), reference (blue a, box h):
    #    a*a / (sqrt(2) a * sqrt(a^2 + h^2)); n=2 no shared bigram; equal lengths -> no penalty.
    # I3 "a red box" vs "red box": n=1 candidate (a a, red h, box h), reference (red h, box h):
    #    2 h^2 / (sqrt(a^2 + 2 h^2) * sqrt(2) h); n=2 candidate (a red a, red box a), reference (red box a):
    #    a^2 / (sqrt(2) a * a) = 1/sqrt(2); lengths 2 vs 1 bigrams -> penalty exp(-1 / (2 * 6^2)).
    a, h = math.log(3), math.log(1.5)
    i1 = 10 * (1 + 1) / 4
    i2 = 10 * (a * a / (math.sqrt(2) * a * math.sqrt(a * a + h * h))) / 4
    i3 = 10 * (2 * h * h / (math.sqrt(a * a + 2 * h * h) * math.sqrt(2) * h) + 1 / math.sqrt(2)) / 4
    i3 *= math.exp(-1 / 72)
    assert (i1, round(i2, 4), round(i3, 4)) == (5.0, 1.6584, 2.8842)  # the numbers worked out on paper
    preds = {1: "red ball", 2: "blue ball", 3: "a red box"}
    refs = {1: ["red ball"], 2: ["blue box"], 3: ["red box"]}
    score, per_id = cider_d(preds, refs)
    assert per_id == pytest.approx({1: i1, 2: i2, 3: i3}, rel=1e-9)
    assert score == pytest.approx((i1 + i2 + i3) / 3, rel=1e-9)


def test_cider_d_averages_over_references() -> None:
    # Two references for image 1: the exact one scores 5 as above, the other shares nothing -> (5 + 0) / 2.
    preds = {1: "red ball", 2: "blue box"}
    refs = {1: ["red ball", "green cone"], 2: ["blue box"]}
    _, per_id = cider_d(preds, refs)
    assert per_id[1] == pytest.approx(2.5) and per_id[2] == pytest.approx(5.0)


def test_empty_corpus_and_mismatched_ids() -> None:
    assert bleu({}, {}) == [0.0] * 4
    assert cider_d({}, {}) == (0.0, {})
    with pytest.raises(ValueError, match="same ids"):
        bleu({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError, match="no reference caption"):
        cider_d({1: "a"}, {1: []})


def test_rouge_l_by_hand() -> None:
    # "a red ball on grass" vs "the red ball": LCS "red ball" = 2; precision 2/5, recall 2/3;
    # vs "a ball": LCS 2, precision 2/5, recall 1 -> the best of each (from different references): P 2/5, R 1.
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    p, r, b2 = 2 / 5, 1.0, 1.2**2
    score, per_id = rouge_l({1: "a red ball on grass", 2: ""}, {1: ["the red ball", "a ball"], 2: ["a cat"]})
    assert per_id == pytest.approx({1: (1 + b2) * p * r / (r + b2 * p), 2: 0.0})
    assert score == pytest.approx(per_id[1] / 2)


def test_without_java_tools_the_result_is_labelled() -> None:
    result = evaluate_captions({1: "a red ball"}, {1: ["a red ball"]}, java_metrics=False)
    assert result.scores["cider_d"] == pytest.approx(0.0)  # one image: every idf is log 1 - log 1 = 0
    assert result.scores["bleu_1"] == pytest.approx(1.0) and result.scores["rouge_l"] == pytest.approx(1.0)
    assert result.protocol.startswith(NOT_OFFICIAL) and NOT_OFFICIAL in result.summary()
    assert set(result.unavailable) == {"meteor", "spice"} and "meteor" not in result.scores


def _scores_over_processes(rank: int, world: int, port: int, queue: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ids = sorted(PREDICTIONS)
    padded = ids + ids[: -len(ids) % world]  # as torch's DistributedSampler pads: the first ids again
    mine = padded[rank::world]
    predictions, references = gather_captions(
        {i: PREDICTIONS[i] for i in mine}, {i: REFERENCES[i] for i in mine}
    )
    queue.put((rank, evaluate_captions(predictions, references, java_metrics=False).scores))
    dist.destroy_process_group()


_SAID = [("red", "grass"), ("blue", "sky"), ("red", "sand"), ("green", "grass"), ("pink", "road"),
         ("red", "sky"), ("blue", "wall")]  # fmt: skip
_TRUE = [("red", "grass"), ("blue", "sky"), ("pink", "grass"), ("green", "grass"), ("pink", "road"),
         ("red", "sand"), ("blue", "wall")]  # fmt: skip
PREDICTIONS = {i: f"a {c} ball on the {p}" for i, (c, p) in enumerate(_SAID)}
REFERENCES = {i: [f"a {c} ball on {p}", f"the {c} ball"] for i, (c, p) in enumerate(_TRUE)}


def test_two_processes_score_each_region_once() -> None:
    # 7 regions: 2 processes get 4 + 4, one twice
    one = evaluate_captions(PREDICTIONS, REFERENCES, java_metrics=False).scores
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_scores_over_processes, args=(r, 2, port, queue)) for r in range(2)]
    for p in processes:
        p.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    for scores in results.values():
        assert scores.keys() == one.keys()
        for name, value in one.items():
            assert math.isclose(scores[name], value, abs_tol=1e-9) or (
                math.isnan(value) and math.isnan(scores[name])
            )
