"""Caption metrics against the real pycocoevalcap and Java, unmocked: our numbers must be the package's.

CI installs both (``make install``, ``.ci/run``); elsewhere these tests skip when either is missing, but under
``CI`` a missing tool fails them, so a broken install cannot pass as green.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from omtseg.evaluation import caption_java
from omtseg.evaluation.caption import NOT_OFFICIAL, evaluate_captions, tokenize
from omtseg.evaluation.caption_java import SPICE_ENV, ptb_tokenize, pycocoevalcap_dir, tools_status

_HAVE_TOOLS = pycocoevalcap_dir() is not None and shutil.which("java") is not None
pytestmark = pytest.mark.skipif(
    not _HAVE_TOOLS and not os.environ.get("CI"), reason="pycocoevalcap and java are needed (make install)"
)

# Visual Genome-style region captions: hyphens, decimals, clitics, accents, brackets, quotes, a line break.
PREDICTIONS = {
    "r1": "A man wearing a red T-shirt.",
    "r2": "the dog's tail is 3.5 inches long",
    "r3": "Café sign on the wall",
    "r4": "white clouds in blue sky",
    "r5": "a woman who doesn't smile",
    "r6": 'a sign that says "stop" (red)',
    "r7": "green leaves on the\ntree",
    "r8": "a",
}
REFERENCES = {
    "r1": ["man in a red t-shirt", "A man wears a red shirt."],
    "r2": ["the tail of the dog", "a dog's long tail"],
    "r3": ["a café sign", "sign on a brick wall"],
    "r4": ["white clouds in the blue sky", "clouds in sky"],
    "r5": ["woman is not smiling", "a woman that doesn't smile."],
    "r6": ["red stop sign", "the sign says STOP"],
    "r7": ["green leaves on a tree"],
    "r8": ["a black cat sitting on the car", "cat"],
}


def _pycocoevalcap_scores() -> dict[str, float]:
    """The same captions scored by pycocoevalcap itself (its tokenizer and scorers, as COCOEvalCap runs)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    # pycocoevalcap keeps a line break inside a caption (it then misaligns every caption after it); ours
    # joins the lines, so the reference run gets the caption as we send it.
    gts = tokenizer.tokenize({k: [{"caption": r} for r in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": " ".join(v.splitlines())}] for k, v in PREDICTIONS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu_{n}": float(s) for n, s in enumerate(bleu, start=1)}
    out["meteor"] = float(Meteor().compute_score(gts, res)[0])
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider_d"] = float(Cider().compute_score(gts, res)[0])
    return out


def test_the_pypi_package_is_found_although_it_has_no_init() -> None:
    spec = importlib.util.find_spec("pycocoevalcap")
    assert spec is not None and spec.origin is None  # the namespace package that crashed the old lookup
    folder = pycocoevalcap_dir()
    assert folder is not None and (folder / "meteor" / "meteor-1.5.jar").is_file()
    assert tools_status()["ptb_tokenizer"] is None and tools_status()["meteor"] is None


def test_ptb_tokenize_equals_pycocoevalcap() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for refs in REFERENCES.values() for c in refs] + ["(left) -- it's 2.5m; ok?", "", "Été"]
    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    ours = ptb_tokenize(captions)
    assert ours == [theirs[i][0] for i in range(len(captions))]
    assert ours[0] == "man in a red t-shirt" and ours[-1] == "été"
    assert ptb_tokenize(["A man's T-shirt, 3.5 inches."]) == ["a man 's t-shirt 3.5 inches"]


def test_scores_equal_pycocoevalcap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # SPICE gets jars that are no jars: Java starts it with the --add-opens flags, it fails, and the result
    # says why instead of raising (one METEOR start serves both checks: each takes seconds).
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"not a jar")
    monkeypatch.setenv(SPICE_ENV, str(tmp_path))
    result = evaluate_captions(PREDICTIONS, REFERENCES)
    theirs = _pycocoevalcap_scores()
    assert result.protocol == "official" and result.official
    assert set(theirs) <= set(result.scores)
    for name, value in theirs.items():
        assert result.scores[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert 0 < theirs["meteor"] < 1 and theirs["cider_d"] > 0  # the captions share words, not all of them
    assert result.unavailable["spice"].startswith("spice failed") and "spice" not in result.scores


def test_our_tokenizer_matches_ptb_on_everyday_captions() -> None:
    # The fallback is an approximation; it must agree on what region captions usually contain.
    captions = [c for refs in REFERENCES.values() for c in refs] + list(PREDICTIONS.values())[:6]
    assert [" ".join(tokenize(c)) for c in captions] == ptb_tokenize(captions)


def test_without_java_the_result_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caption_java.shutil, "which", lambda name: None)
    result = evaluate_captions(PREDICTIONS, REFERENCES)
    assert result.protocol.startswith(NOT_OFFICIAL) and "java" in result.protocol and not result.official
    assert NOT_OFFICIAL in result.summary() and result.to_json()["protocol"] == result.protocol
    assert set(result.unavailable) == {"meteor", "spice"} and "meteor" not in result.scores
    # Our tokenizer happens to agree with PTB on these captions, so BLEU, ROUGE-L and CIDEr-D do too.
    official = evaluate_captions(PREDICTIONS, REFERENCES)
    for name in ("bleu_4", "rouge_l", "cider_d"):
        assert result.scores[name] == pytest.approx(official.scores[name], rel=1e-12)


def test_spice_without_corenlp_is_unavailable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SPICE_ENV, raising=False)
    if tools_status()["spice"] is None:
        pytest.skip("CoreNLP jars are installed in pycocoevalcap's spice/lib")
    assert SPICE_ENV in str(tools_status()["spice"])
    monkeypatch.setenv(SPICE_ENV, str(tmp_path))
    assert str(tmp_path) in str(tools_status()["spice"])
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"")
    assert tools_status()["spice"] is None
