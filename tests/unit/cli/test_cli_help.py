"""`--help` of every verb, compared with tests/support/snapshots/help/*.txt: a changed flag is a visible diff.

Regenerate deliberately with TUNELAB_UPDATE_SNAPSHOTS=1 (and read the diff before committing it).
"""

import os
import re

import pytest
from typer.testing import CliRunner

from conftest import SUPPORT
from tunelab.cli.main import app

SNAPSHOTS = SUPPORT / "snapshots" / "help"


def _verbs() -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(app)
    verbs = []
    for name, cmd in sorted(group.commands.items()):
        verbs.append([name])
        for sub in sorted(getattr(cmd, "commands", {}) or {}):
            verbs.append([name, sub])
    return verbs


@pytest.mark.parametrize("verb", _verbs(), ids=lambda v: " ".join(v))
def test_help_snapshot(verb):
    r = CliRunner().invoke(
        app, [*verb, "--help"], env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}, prog_name="tunelab"
    )
    assert r.exit_code == 0, r.output
    text = re.sub(r"[ \t]+\n", "\n", r.output)
    path = SNAPSHOTS / f"{'_'.join(verb)}.txt"
    if os.environ.get("TUNELAB_UPDATE_SNAPSHOTS") == "1" or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if os.environ.get("TUNELAB_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"new snapshot written: {path} (commit it)")
    assert text == path.read_text(), (
        f"`tunelab {' '.join(verb)} --help` changed; rerun with TUNELAB_UPDATE_SNAPSHOTS=1 if intended"
    )


def test_every_verb_has_a_snapshot():
    expected = {"_".join(v) + ".txt" for v in _verbs()}
    stale = sorted(p.name for p in SNAPSHOTS.glob("*.txt") if p.name not in expected)
    assert not stale, f"snapshots of verbs that no longer exist: {stale}"
