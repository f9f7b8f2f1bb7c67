"""Names say the role: no two of tunelab's modules share a file name (`engine.py` for a model server and
an Optuna wrapper made every search ambiguous), and no module is named like a package it is not.
"""

from __future__ import annotations

from collections import defaultdict

from conftest import ROOT

SRC = ROOT / "src" / "tunelab"

# Names two modules share for one meaning, seen from two layers (each says the shared meaning).
SAME_MEANING = {
    "distributed.py": "the distributed section of the config, and the processes that follow it",
    "report.py": "the HTML report of runs, and the sweep's report built on it",
    "resolve.py": "resolving a reference: an artifact in its store, a model to the folder it loads from",
}


def module_names() -> dict[str, list[str]]:
    """File name -> the modules (and packages, as `name.py`) that use it, relative to src/tunelab."""
    found = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        if path.name != "__init__.py":
            found[path.name].append(str(path.relative_to(SRC)))
    for package in sorted(p for p in SRC.iterdir() if (p / "__init__.py").is_file()):
        found[f"{package.name}.py"].append(f"{package.name}/ (package)")
    return found


def test_no_two_modules_share_a_name_with_different_meanings():
    shared = {name: where for name, where in module_names().items() if len(where) > 1}
    new = {name: where for name, where in shared.items() if name not in SAME_MEANING}
    assert not new, f"name each module for its role (see STYLE.md, 'Names say the role'): {new}"
