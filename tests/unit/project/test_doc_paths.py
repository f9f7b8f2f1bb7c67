"""Every repository path and `tunelab.` module that code (its comments and strings) or a doc cites exists.

A rename that misses a citation leaves the reader searching for a file that is gone; this test
names each stale citation by file:line. Cited are: paths under the repository's top folders
(`src/tunelab/...`, `tests/...`, `bench/...`, `scripts/...`, `docs/...`, `examples/...`), a
package's own `.py` files as the docs name them (`data/conversations.py`, `sweep/study.py`), and dotted
names (`tunelab.runs.RunDir`: the module, and its first attribute defined or imported at its top).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "tunelab"
TOP = ("src/tunelab", "tests", "bench", "scripts", "docs", "examples")
PACKAGES = tuple(sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()))
MODULES = frozenset(PACKAGES) | {p.stem for p in SRC.glob("*.py")}
# What a command writes, not what the repository holds; each says which command.
WRITTEN_BY_A_COMMAND = {
    "bench/results/w3.json": "bench/gpu_check.sh writes it on a machine with a GPU (docs/distributed.md)",
    "bench/out": "the benchmarks' scratch folder (.gitignore)",
    "bench/gpu-wheels": "bench/gpu_wheels.py gathers it for the GPU check (.gitignore)",
    "bench/gpu-wheels-cp311": "bench/gpu_wheels.py --python-version 3.11 gathers it for the dry run (.gitignore)",
}

# Not preceded by a path character, so `foo/tests/x.py` or `a.tests/...` is not a citation.
_START = r"(?<![\w./<>{}-])"
# A placeholder or pattern right after the cited part (`tests/battery_<area>.py`, `bench/results/{name}.json`,
# `docs/*.md`) makes it a family of paths, not a path.
_PATTERN_NEXT = set("<{*[$")
REPO_PATH = re.compile(_START + r"((?:" + "|".join(map(re.escape, TOP)) + r")/[\w./+,=-]*)")
PACKAGE_FILE = re.compile(_START + r"((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)\b")
# `tunelab.` then a module: `tunelab.type` or `tunelab.group` are tracker tag keys, not citations.
DOTTED = re.compile(r"(?<![\w.])tunelab\.(" + "|".join(sorted(MODULES)) + r")\b((?:\.\w+)*)")


def _citing_text(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what cites in `path`: a Python file's comments and string literals (docstrings
    among them), a Markdown file whole."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out += [(tok.start[0] + i, line) for i, line in enumerate(tok.string.splitlines())]
    return out


def _cited_files() -> list[Path]:
    code = [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    code += (ROOT / "scripts").glob("*.py")
    docs = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md", ROOT / "tests" / "README.md"]
    return [*sorted(p for p in code if p != Path(__file__).resolve()), *sorted(docs)]


def _written_by_a_command(cited: str) -> bool:
    return any(cited == w or cited.startswith(w + "/") for w in WRITTEN_BY_A_COMMAND)


def _is_pattern(line: str, end: int) -> bool:
    return end < len(line) and line[end] in _PATTERN_NEXT


@cache
def _top_names(module: Path) -> frozenset[str]:
    """The names a module defines or imports at its top level (what `module.name` can reach)."""
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return frozenset(names)


def dotted_problem(parts: list[str]) -> str | None:
    """Why `tunelab.<parts>` names nothing, or None: the longest module prefix must exist and the
    first part after it must be defined at that module's top (deeper attributes are not checked)."""
    where = SRC
    for i, part in enumerate(parts):
        if (where / part / "__init__.py").is_file():
            where = where / part
            continue
        if (where / f"{part}.py").is_file():
            where = where / f"{part}.py"
            rest = parts[i + 1 :]
        else:
            where, rest = where / "__init__.py", parts[i:]
        if rest and rest[0] not in _top_names(where):
            return f"{where.relative_to(ROOT)} defines no {rest[0]!r}"
        return None
    return None


def citations(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, what is cited, why it is missing or None) for every citation in `path`."""
    out = []
    for number, line in _citing_text(path):
        for m in REPO_PATH.finditer(line):
            cited = m[1].rstrip("./+,=-")  # the sentence's punctuation, not the path's
            if cited.count("/") and not _is_pattern(line, m.end()):
                there = (ROOT / cited).exists() or _written_by_a_command(cited)
                out.append((number, cited, None if there else "no such file or folder"))
        for m in PACKAGE_FILE.finditer(line):
            if not _is_pattern(line, m.end()) and not line[: m.start()].endswith(("src/tunelab/", "tunelab/")):
                out.append((number, m[1], None if (SRC / m[1]).is_file() else f"no src/tunelab/{m[1]}"))
        for m in DOTTED.finditer(line):
            parts = [m[1], *m[2].split(".")[1:]]
            out.append((number, "tunelab." + ".".join(parts), dotted_problem(parts)))
    return out


@pytest.mark.parametrize("path", _cited_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_path_and_module_exists(path):
    missing = [f"{path.relative_to(ROOT)}:{n}: {cited} ({why})" for n, cited, why in citations(path) if why]
    assert not missing, "cited but not there (fix the citation):\n" + "\n".join(missing)


def test_the_scan_finds_citations_and_misses(tmp_path):
    """The scanner sees each kind of citation, in a docstring and in a comment, and tells a missing one."""
    f = tmp_path / "m.py"
    f.write_text(
        '"""See tests/unit/test_compat.py, sweep/study.py and tunelab.compat.optuna_running_trial."""\n'
        "# gone: tests/test_sweep_engine.py, data/preference.py, tunelab.sweep.engine, tunelab.compat.nothing_here\n"
        "x = 'tests/battery_<area>.py'  # a family of files, not a path\n"
    )
    found = {cited: why for _, cited, why in citations(f)}
    assert found == {
        "tests/unit/test_compat.py": None,
        "sweep/study.py": None,
        "tunelab.compat.optuna_running_trial": None,
        "tests/test_sweep_engine.py": "no such file or folder",
        "data/preference.py": "no src/tunelab/data/preference.py",
        "tunelab.sweep.engine": "src/tunelab/sweep/__init__.py defines no 'engine'",
        "tunelab.compat.nothing_here": "src/tunelab/compat.py defines no 'nothing_here'",
    }
