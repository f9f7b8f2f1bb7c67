"""Arrows point one way: each package imports only packages below it (docs/architecture.md).

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"
# lowest first; a package may import the packages of earlier layers, never a later one
LAYERS = [
    {"errors"},
    {"refs", "dtypes", "cache", "compat", "files", "procs"},
    {"hub"},
    {"config"},
    {"runs"},
    {"outputs"},
    {"artifacts"},
    {"data"},
    {"scoring"},
    {"model", "tracking"},
    {"perf"},
    {"inference"},
    {"evaluation"},
    {"training"},
    {"sweep"},
    {"cli"},
    {"__main__"},  # `python -m tunelab` (what launchers start): the CLI
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for n in names:
            parts = n.split(".")
            if parts[0] == "tunelab" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_package_has_a_layer():
    packages = {_package(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYER), f"add to LAYERS (and docs/architecture.md): {sorted(packages - set(LAYER))}"


def test_imports_point_down():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        src = _package(path)
        if src == "__init__":
            continue
        for target in _imports(path):
            if target != src and target in LAYER and LAYER[target] >= LAYER[src]:
                wrong.append(f"{path.relative_to(SRC)} imports tunelab.{target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
