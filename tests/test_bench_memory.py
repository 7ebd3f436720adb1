"""The memory benchmarks' measurement: a fresh child's own peak RSS, not its parent's."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peak_memory import class_names, run_child

MIB = 2**20


def test_child_peak_rss_is_its_own(tmp_path: Path) -> None:
    # ru_maxrss of a child includes the parent's resident set at fork; VmHWM does not.
    parent = bytearray(400 * MIB)  # resident: bytearray zero-fills
    code = (
        "import sys; from benchmarks.peak_memory import report_peak_rss\n"
        "block = bytearray(int(sys.argv[1]) * 2**20)\nreport_peak_rss()"
    )
    small, _, _ = run_child(code, ["1"], tmp_path)
    large, _, _ = run_child(code, ["300"], tmp_path)
    assert len(parent) == 400 * MIB
    assert small < 300  # the interpreter and the imports, not the parent's 400 MiB
    assert large - small > 280  # the child's own 300 MiB


def test_class_names_are_distinct() -> None:
    names = class_names(2000)
    assert len(names) == len(set(names)) == 2000
