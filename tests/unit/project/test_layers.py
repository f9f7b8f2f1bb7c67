"""Arrows point one way: each package imports only packages below it (docs/architecture.md).

Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src" / "tunelab"
# lowest first; a package may import the packages of earlier layers, never a later one
LAYERS = [
    {"errors"},
    {"refs", "dtypes", "cache", "compat", "writability", "procs"},
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
    {"export"},
    {"serve"},
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


# Module cycles there were when this test was written, in code other changes own (remove each once broken);
# a new cycle anywhere fails.
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = ("tunelab", *path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _module_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The tunelab modules `path` imports (`from tunelab.export import gguf` is the module tunelab.export.gguf)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = (f"{node.module}.{a.name}" for a in node.names)
            out |= {name if name in modules else node.module for name in names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out & set(modules)


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    part = {stack.pop()}
                    while node not in part:
                        part.add(stack.pop())
                    if len(part) > 1:
                        found.append(part)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycles_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_module_import_cycles():
    modules = _modules()
    graph = {name: _module_imports(path, modules) - {name} for name, path in modules.items()}
    new = [sorted(c) for c in _cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, "modules that import each other (move the shared piece into a third, lower module):\n" + "\n".join(
        " <-> ".join(c) for c in new
    )
