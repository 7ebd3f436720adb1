"""The Java tools of the COCO caption evaluation, run from the installed ``pycocoevalcap`` (PyPI).

pycocoevalcap ships the Stanford PTB tokenizer (``tokenizer/stanford-corenlp-3.4.1.jar``), METEOR 1.5
(``meteor/meteor-1.5.jar`` with its paraphrase table) and SPICE (``spice/spice-1.0.jar``, which also needs the
Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads at run time). We run the jars ourselves, with the
arguments and the line protocol of pycocoevalcap's wrappers, because those wrappers write temporary files into
the installed package, download on first use and die on their own assertions; the scores are the same.

SPICE runs only when ``$OMTSEG_SPICE_CORENLP`` names a folder holding ``stanford-corenlp-3.6.0.jar`` and
``stanford-corenlp-3.6.0-models.jar`` (or pycocoevalcap's own ``spice/lib`` has them); it is started with the
``--add-opens`` flags that its serialisation library (FST, used by SPICE's cache) needs on Java 9 and later.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K")

SPICE_ENV = "OMTSEG_SPICE_CORENLP"
TOOLS = ("ptb_tokenizer", "meteor", "spice")
_TOKENIZER_JAR = Path("tokenizer") / "stanford-corenlp-3.4.1.jar"
_METEOR_JAR = Path("meteor") / "meteor-1.5.jar"
_SPICE_JAR = Path("spice") / "spice-1.0.jar"
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# PTB tokens that coco-caption drops after tokenising (pycocoevalcap's PUNCTUATIONS).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Java 9+ refuses SPICE's reflective serialisation into these packages unless they are opened to it.
SPICE_JAVA_FLAGS = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in (
        "java.lang", "java.lang.reflect", "java.io", "java.math", "java.net", "java.nio", "java.text",
        "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
    )
)  # fmt: skip
_TIMEOUT_S = 600


def pycocoevalcap_dir() -> Path | None:
    """The installed pycocoevalcap's folder, or None.

    The PyPI package has no top-level ``__init__.py`` (a namespace package), so its spec has no ``origin``:
    its folder is found among ``submodule_search_locations``.
    """
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        if (Path(location) / _TOKENIZER_JAR).is_file():
            return Path(location)
    return None


def corenlp_dir() -> tuple[Path | None, str | None]:
    """The folder with SPICE's CoreNLP jars, or None and why SPICE cannot run."""
    named = os.environ.get(SPICE_ENV)
    candidates = [Path(named)] if named else []
    package = pycocoevalcap_dir()
    if package is not None:
        candidates.append(package / "spice" / "lib")
    for folder in candidates:
        if all((folder / jar).is_file() for jar in _CORENLP_JARS):
            return folder, None
    if named:
        return None, f"${SPICE_ENV}={named} does not hold {' and '.join(_CORENLP_JARS)}"
    return None, (
        f"SPICE needs Stanford CoreNLP 3.6.0 (stanford-corenlp-full-2015-12-09): set ${SPICE_ENV} to the "
        f"folder holding {' and '.join(_CORENLP_JARS)}"
    )


def tools_status() -> dict[str, str | None]:
    """Per tool (``ptb_tokenizer``, ``meteor``, ``spice``): None when it can run here, else why not."""
    package = pycocoevalcap_dir()
    if package is None:
        why = "pycocoevalcap is not installed (pip install pycocoevalcap; it runs on Java)"
        return dict.fromkeys(TOOLS, why)
    if shutil.which("java") is None:
        return dict.fromkeys(
            TOOLS, "no `java` on PATH (install a Java runtime: apt-get install default-jre-headless)"
        )
    status: dict[str, str | None] = {"ptb_tokenizer": None, "meteor": None, "spice": None}
    if not (package / _METEOR_JAR).is_file():
        status["meteor"] = f"{package / _METEOR_JAR} is missing (reinstall pycocoevalcap)"
    status["spice"] = corenlp_dir()[1]
    return status


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a Java tool; its stdout as text. Raises RuntimeError with the tool's own error output."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {done.stderr.decode(errors='replace')[-800:]}")
    return done.stdout.decode("utf-8")


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Captions as coco-caption tokenises them: Stanford's PTB tokenizer, lower-cased, punctuation dropped.

    One Java call for all captions (one per line, ``-preserveLines``).

    Args:
        captions: raw captions.

    Returns:
        Per caption, its tokens joined by single spaces ("a man 's t-shirt").
    """
    package = pycocoevalcap_dir()
    if package is None:
        raise RuntimeError("pycocoevalcap is not installed: pip install pycocoevalcap.")
    if not captions:
        return []
    # A line break inside a caption would shift every later caption by one line.
    lines = [" ".join(c.splitlines()) for c in captions]
    with tempfile.TemporaryDirectory(prefix="omtseg_ptb_") as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_text("\n".join(lines), encoding="utf-8")
        # -encoding: without it Java 17 reads the file in the locale's charset and loses "é" under LANG=C.
        out = _run([
            "java", "-cp", str(package / _TOKENIZER_JAR), "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines", "-lowerCase", "-encoding", "utf-8", str(source),
        ])  # fmt: skip
    tokenized = out.split("\n")
    if len(tokenized) < len(lines):
        raise RuntimeError(f"The PTB tokenizer returned {len(tokenized)} lines for {len(lines)} captions.")
    return [
        " ".join(w for w in t.rstrip().split(" ") if w not in PTB_PUNCTUATION)
        for t in tokenized[: len(lines)]
    ]


def meteor(
    predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]
) -> tuple[float, dict[K, float]]:
    """METEOR 1.5 as pycocoevalcap runs it (``-l en -norm``, its stats-then-EVAL protocol).

    Args:
        predictions: one tokenized caption per id.
        references: the tokenized references per id.

    Returns:
        The corpus score (aggregated statistics, not the mean of the per-id scores) and each id's.
    """
    package = pycocoevalcap_dir()
    if package is None:
        raise RuntimeError("pycocoevalcap is not installed: pip install pycocoevalcap.")
    keys = list(predictions)
    cmd = ["java", "-jar", "-Xmx2G", str(package / _METEOR_JAR), "-", "-", "-stdio", "-l", "en", "-norm"]
    process = subprocess.Popen(
        cmd, cwd=package / "meteor", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None

    def send(line: str) -> None:
        assert process.stdin is not None
        process.stdin.write((line + "\n").encode("utf-8"))
        process.stdin.flush()

    def read() -> str:
        assert process.stdout is not None and process.stderr is not None
        answer = process.stdout.readline().decode("utf-8").strip()
        if not answer:
            process.kill()
            raise RuntimeError(f"METEOR stopped: {process.stderr.read().decode(errors='replace')[-800:]}")
        return answer

    def clean(text: str) -> str:  # "|||" separates the fields of a line
        return text.replace("|||", "").replace("  ", " ")

    try:
        stats = []
        for k in keys:  # SCORE ||| reference 1 ||| ... ||| reference n ||| hypothesis -> statistics
            send(" ||| ".join(["SCORE", *(clean(r) for r in references[k]), clean(predictions[k])]))
            stats.append(read())
        send(" ||| ".join(["EVAL", *stats]))  # -> one score per id, then the corpus score
        per_id = {k: float(read()) for k in keys}
        score = float(read())
    finally:
        process.stdin.close()
        process.kill()
        process.wait()
    return score, per_id


def spice(
    predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]
) -> tuple[float, dict[K, float]]:
    """SPICE F-score (``All``) as pycocoevalcap runs it (``-subset``), with Java 9+'s ``--add-opens`` flags.

    Args:
        predictions, references: tokenized captions per id, as in :func:`meteor`.

    Returns:
        The mean of the per-id F-scores (NaN where SPICE parsed nothing, as pycocoevalcap) and each id's.
    """
    package = pycocoevalcap_dir()
    folder, why = corenlp_dir()
    if package is None or folder is None:
        raise RuntimeError(why or "pycocoevalcap is not installed: pip install pycocoevalcap.")
    keys = list(predictions)
    records = [
        {"image_id": i, "test": predictions[k], "refs": list(references[k])} for i, k in enumerate(keys)
    ]
    classpath = os.pathsep.join(
        [str(package / _SPICE_JAR), str(package / "spice" / "lib" / "*"), str(folder / "*")]
    )
    with tempfile.TemporaryDirectory(prefix="omtseg_spice_") as tmp:
        source, target = Path(tmp) / "input.json", Path(tmp) / "output.json"
        source.write_text(json.dumps(records), encoding="utf-8")
        _run([
            "java", *SPICE_JAVA_FLAGS, "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", str(source),
            "-cache", str(Path(tmp) / "cache"), "-out", str(target), "-subset", "-silent",
        ], cwd=package / "spice")  # fmt: skip
        results: list[dict[str, Any]] = json.loads(target.read_text(encoding="utf-8"))
    by_index = {int(r["image_id"]): _float(r["scores"]["All"]["f"]) for r in results}
    per_id = {k: by_index[i] for i, k in enumerate(keys)}
    return sum(per_id.values()) / len(per_id), per_id


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
