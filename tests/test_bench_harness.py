"""The benchmark harness (benchmarks/run.py) on fake tiny suites: reports written, failures reported."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks import run as harness

FAKE_SUITES = {
    "fast": """
        def run(out_dir, quick=False):
            out_dir.mkdir(parents=True, exist_ok=True)
            return {"speed": {"ours_s": 1.0, "theirs_s": 4.0}, "quick": quick, "sizes": [1, 2, 3]}
    """,
    "broken": """
        def run(out_dir):
            raise RuntimeError("suite exploded on purpose")
    """,
    "nocuda": """
        def run(out_dir):
            return {"skipped": "no CUDA device: skipped"}
    """,
}


@pytest.fixture
def fake_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    package = tmp_path / "fake_bench_suites"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, code in FAKE_SUITES.items():
        (package / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield {name: f"fake_bench_suites.{name}" for name in [*FAKE_SUITES, "missing"]}
    for module in [m for m in sys.modules if m.startswith("fake_bench_suites")]:
        del sys.modules[module]


OURS, THEIRS = harness.at("speed", "ours_s"), harness.at("speed", "theirs_s")
GOALS = [
    harness.Goal("fast", "speed-up", harness.ratio(THEIRS, OURS), ">=", 3.0, "x"),
    harness.Goal("fast", "ours / theirs", harness.ratio(OURS, THEIRS), "<=", 0.1, "x"),
    harness.Goal("fast", "absent figure", harness.at("speed", "nope")),
    harness.Goal("broken", "never judged", harness.at("x"), ">=", 1.0),
]


def test_reports_written_and_goals_judged(tmp_path: Path, fake_suites: dict[str, str]) -> None:
    out = tmp_path / "out"
    results = harness.run_all(out, only=["fast", "nocuda"], quick=True, suites=fake_suites, goals=GOALS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["suites"]["fast"]["status"] == "ok"
    assert saved["suites"]["fast"]["result"]["quick"] is True  # --quick reaches a run() that takes it
    assert saved["suites"]["nocuda"]["status"] == "skipped"
    assert "no CUDA device: skipped" in (out / "results.md").read_text()
    assert saved["machine"]["torch"] and saved["machine"]["cpu_count"] >= 1 and saved["machine"]["date"]
    goals = {g["name"]: g for g in results["goals"]}
    assert goals["speed-up"]["value"] == pytest.approx(4.0) and goals["speed-up"]["met"] is True
    assert goals["ours / theirs"]["value"] == pytest.approx(0.25) and goals["ours / theirs"]["met"] is False
    assert goals["absent figure"]["value"] is None and "nope" in goals["absent figure"]["missing"]
    assert "never judged" not in goals  # the suite did not run
    md = (out / "results.md").read_text()
    assert "## fast" in md and "| speed.theirs_s | 4 |" in md and "| sizes | [1, 2, 3] |" in md
    assert "| speed-up | 4x | >= 3x | yes |" in md and "| ours / theirs | 0.25x | <= 0.1x | **no** |" in md
    assert (out / "goals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_suite_is_reported_and_fails_the_run(
    tmp_path: Path, fake_suites: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "SUITES", fake_suites)
    monkeypatch.setattr(harness, "GOALS", GOALS)
    out = tmp_path / "out"
    code = harness.main(["--out", str(out), "--only", "broken,fast,missing"])
    assert code == 1
    saved = json.loads((out / "results.json").read_text())
    suites = saved["suites"]
    assert suites["broken"]["status"] == "failed"
    assert "RuntimeError: suite exploded on purpose" in suites["broken"]["error"]
    assert "suite exploded on purpose" in suites["broken"]["traceback"]
    assert suites["fast"]["status"] == "ok"  # later suites still ran
    assert suites["fast"]["result"]["quick"] is False
    assert suites["missing"]["status"] == "failed" and "ModuleNotFoundError" in suites["missing"]["error"]
    md = (out / "results.md").read_text()
    assert "| broken | failed: RuntimeError: suite exploded on purpose |" in md
    assert harness.main(["--out", str(out), "--only", "fast", "--no-malloc-tuning"]) == 0


def test_unknown_suite_name_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        harness.main(["--out", str(tmp_path), "--only", "beit3,nonsense"])
    assert exc.value.code == 2
    assert "nonsense" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_quick_note_when_a_suite_has_no_reduced_mode(tmp_path: Path, fake_suites: dict[str, str]) -> None:
    results = harness.run_all(tmp_path, only=["nocuda"], quick=True, suites=fake_suites, goals=[])
    assert "no reduced mode" in results["suites"]["nocuda"]["note"]


def test_flatten_nested_results() -> None:
    rows = dict(harness.flatten({"a": {"b": 1.5, "c": [1, 2]}, "d": [{"e": 3}], "f": list(range(10))}))
    assert rows["a.b"] == 1.5 and rows["a.c"] == "[1, 2]" and rows["d.0.e"] == 3 and rows["f.9"] == 9


def test_gpu_suite_skips_without_cuda_and_runs_its_code_on_cpu(tmp_path: Path) -> None:
    from benchmarks import gpu
    from omtseg.types import Vocabulary

    if not torch.cuda.is_available():
        skipped = gpu.run(tmp_path / "skip")
        assert skipped == {"skipped": "no CUDA device: skipped", "torch": torch.__version__}
    # Every measurement path on CPU at toy size (the CUDA-only parts are allocator statistics).
    tiny_head = dict(conv_dim=32, mask_dim=32, hidden_dim=32, num_queries=4, num_decoder_layers=1,
                     num_pixel_decoder_layers=1, decoder_feedforward=32, pixel_decoder_feedforward=32,
                     num_heads=2, adapter_channels=32)
    vocabulary = Vocabulary.from_names(["cat", "grass, lawn"], is_thing=[True, False])
    result = gpu.run(tmp_path / "cpu", device="cpu", backbone="tiny", image_size=64, max_batch=1,
                     matmul_size=64, repeats=1, variants=("channels_last", "sdpa_math"),
                     model_kwargs=tiny_head, vocabulary=vocabulary)
    assert result["train"]["batch_size"] == 1 and result["train"]["images_per_s"] > 0
    assert result["train"]["flops_per_step"] > result["inference"]["flops_per_forward"] > 0
    assert result["backbone"]["train"]["flops"] > result["backbone"]["inference"]["flops"] > 0
    assert set(result["variants"]) == {"channels_last", "sdpa_math", "winners"}
    assert all("speedup" in result["variants"][v] for v in ("channels_last", "sdpa_math"))
    assert json.loads((tmp_path / "cpu" / "gpu.json").read_text())["text_chunks"] == 1
