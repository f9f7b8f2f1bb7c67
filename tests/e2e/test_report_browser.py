"""The report in a real browser: headless Chromium renders the plots and tables, and asks for nothing.

Runs scripts/report_screenshot.py (the script that made docs/report-screenshot.png) and checks the
DOM it reports. Skips, saying why, where the system Chromium or Playwright is missing; `make test`
installs Chromium first when it can (scripts/ensure-test-tools.sh).
"""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from report_runs import make_run, make_unfinished_run
from tunelab.evaluation.report import write_report

CHROMIUM = Path("/usr/bin/chromium")


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not installed (apt-get install chromium; make test does it when run as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_report_renders_in_headless_chromium(tmp_path):
    runs = [
        make_run(tmp_path, "lr-1e-3", 1e-3, 0.50),
        make_run(tmp_path, "lr-3e-3", 3e-3, 0.75),
        make_unfinished_run(tmp_path, "starting"),
    ]
    report, shot = tmp_path / "report.html", tmp_path / "shot.png"
    write_report(runs, report)
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report_screenshot.py"), str(report), str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    dom = json.loads(r.stdout)
    assert dom["title"] == "tunelab report: lr-1e-3, lr-3e-3, starting"
    assert dom["headings"] == ["Final metrics", "Curves", "Configuration", "Sample answers", "Run metadata"]
    assert dom["images"] == 6 and dom["images_decoded"] == 6  # every plot decoded to a real image
    assert dom["tables"] >= 8 and dom["sample_tables"] == 3 and dom["metric_rows"] >= 6
    assert dom["best_cells"] >= 3 and dom["gap_notes"] >= 1
    assert dom["scripts"] == 0 and dom["external"] == [] and dom["network_requests"] == []
    assert png_size(shot) == (1280, 1700) and shot.stat().st_size > 20_000
