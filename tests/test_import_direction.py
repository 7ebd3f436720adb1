"""The dependency direction of DESIGN.md, checked by parsing every import in the package.

Top-level modules are ranked (commands -> cli -> lit modules -> checkpoint -> modeling / captioning / data /
evaluation -> types / io): a module imports only modules of lower rank, or its own package. Peers of one
rank keep apart as DESIGN.md says (data imports no modeling, evaluation neither, ...).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omtseg"

RANKS: dict[str, int] = {
    "commands": 6,
    "cli": 5,
    "api": 5,
    "lit_module": 4,
    "lit_captioner": 4,
    "lit_pretrain": 4,
    "callbacks": 4,
    "checkpoint": 3,
    "deploy": 3,
    "captioning": 2,
    "modeling": 1,
    "data": 1,
    "evaluation": 1,
    "optim": 1,
    "visualize": 1,
    "types": 0,
    "io": 0,
    "boxes": 0,
    "_pngids": -1,  # the native extension, under io
    "__init__": 0,
}
"""Top-level module or package -> rank; imports point to lower ranks only."""

# layer -> omtseg modules of a lower rank it must still not import, and third-party roots it must not import.
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "io": ({"types", "boxes"}, {"torch", "lightning"}),
    "types": ({"io", "boxes"}, {"lightning"}),
    "boxes": ({"types", "io"}, {"lightning"}),
    "modeling": (set(), {"lightning"}),
    "captioning": ({"data", "evaluation", "optim", "visualize"}, {"lightning"}),
    "checkpoint": ({"data", "evaluation", "optim", "visualize"}, {"lightning"}),
    "deploy": ({"checkpoint", "evaluation", "optim", "visualize"}, {"lightning"}),
    "lit_module": ({"callbacks", "lit_captioner", "lit_pretrain"}, set()),
    "lit_captioner": ({"callbacks", "lit_module", "lit_pretrain"}, set()),
    "lit_pretrain": ({"callbacks", "lit_module", "lit_captioner"}, set()),
    "callbacks": ({"lit_module", "lit_captioner", "lit_pretrain"}, set()),
}
EVERYWHERE = {"torchvision", "timm"}
# The package root re-exports the public face on first attribute access (PEP 562): `from omtseg import
# Segmenter` works while `import omtseg` itself loads nothing of it (checked below).
LAZY_EXPORTS: dict[str, set[str]] = {"__init__": {"omtseg.api"}}


def _imports(path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            if module == "omtseg":  # `from omtseg import checkpoint` imports omtseg.checkpoint
                names += [f"omtseg.{a.name}" for a in node.names]
            elif module:
                names.append(module)
    return names


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _violations(path: Path, source: str | None = None) -> list[str]:
    layer = _layer(path)
    if layer not in RANKS:
        return [f"{layer} (unranked: give omtseg/{layer} a rank in RANKS and DESIGN.md)"]
    inner, outer = FORBIDDEN.get(layer, (set(), set()))
    bad = []
    for name in _imports(path, source):
        parts = name.split(".")
        if parts[0] == "omtseg" and len(parts) > 1:
            target = parts[1]
            if target == layer or name in LAZY_EXPORTS.get(layer, set()):
                continue
            if target not in RANKS or RANKS[target] >= RANKS[layer] or target in inner:
                bad.append(name)
        elif parts[0] in outer | EVERYWHERE:
            bad.append(name)
    return bad


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_imports_point_one_way(path: Path) -> None:
    assert _violations(path) == [], f"{path} breaks the layering of DESIGN.md"


def test_checker_catches_a_violation() -> None:
    # Probe sources judged as if they lived in the package (nothing is written into it).
    probe = PACKAGE / "modeling" / "probe.py"
    source = (
        "import torch\nfrom omtseg.data import synthetic\nimport lightning.pytorch\n"
        "from ..evaluation import panoptic\nfrom .. import types\nfrom omtseg import checkpoint\n"
    )
    assert _violations(probe, source) == [
        "omtseg.data", "lightning.pytorch", "omtseg.evaluation", "omtseg.checkpoint"
    ]
    upward = "\n".join(
        ["from omtseg.cli import main", "from omtseg.commands import demo", "from omtseg.lit_module import M"]
    )
    assert _violations(PACKAGE / "lit_captioner.py", upward) == [
        "omtseg.cli", "omtseg.commands", "omtseg.lit_module"
    ]
    assert _violations(PACKAGE / "cli.py", "import omtseg.commands.demo\nimport omtseg.lit_module\n") == [
        "omtseg.commands.demo"
    ]
    assert _violations(PACKAGE / "newthing.py", "") == [
        "newthing (unranked: give omtseg/newthing a rank in RANKS and DESIGN.md)"
    ]


def test_import_omtseg_loads_no_api() -> None:
    code = "import sys, omtseg\nprint('omtseg.api' in sys.modules, omtseg.Segmenter.__module__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "omtseg.api"]


def test_the_omtseg_command_loads_only_what_fit_needs() -> None:
    # Commands are imported when they run: `omtseg fit` loads no zero-shot, prepare or demo code.
    code = (
        "import sys, omtseg.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('omtseg.commands', 'omtseg.data.prepare',"
        " 'omtseg.data.zeroshot', 'omtseg.data.benchmark')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
