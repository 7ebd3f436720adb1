"""The dependency direction of DESIGN.md, checked by parsing every import in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omtseg"

# layer -> omtseg subpackages/modules it must not import, plus third-party roots it must not import.
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "io": ({"types", "modeling", "data", "evaluation", "lit_module", "cli"}, {"torch", "lightning"}),
    "types": ({"modeling", "data", "evaluation", "lit_module", "cli"}, {"lightning", "torchvision", "timm"}),
    "modeling": ({"data", "evaluation", "lit_module", "cli"}, {"lightning", "torchvision", "timm"}),
    "data": ({"modeling", "evaluation", "lit_module", "cli"}, {"torchvision", "timm"}),
    "evaluation": ({"modeling", "data", "lit_module", "cli"}, {"torchvision", "timm"}),
}
EVERYWHERE = {"torchvision", "timm"}


def _imports(path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                names.append(".".join(base + ((node.module,) if node.module else ())))
            elif node.module:
                names.append(node.module)
    return names


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _violations(path: Path, source: str | None = None) -> list[str]:
    layer = _layer(path)
    inner, outer = FORBIDDEN.get(layer, (set(), EVERYWHERE))
    bad = []
    for name in _imports(path, source):
        parts = name.split(".")
        if parts[0] == "omtseg" and len(parts) > 1 and parts[1] in inner:
            bad.append(name)
        elif parts[0] in outer | EVERYWHERE:
            bad.append(name)
    return bad


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_imports_point_one_way(path: Path) -> None:
    assert _violations(path) == [], f"{path} breaks the layering of DESIGN.md"


def test_checker_catches_a_violation() -> None:
    # A probe source judged as if it lived in omtseg/modeling (nothing is written into the package).
    probe = PACKAGE / "modeling" / "probe.py"
    source = (
        "import torch\nfrom omtseg.data import synthetic\nimport lightning.pytorch\n"
        "from ..evaluation import panoptic\nfrom .. import types\n"
    )
    assert _violations(probe, source) == ["omtseg.data", "lightning.pytorch", "omtseg.evaluation"]
