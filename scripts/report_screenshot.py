"""Open a tunelab report in headless Chromium, print what the rendered page holds, save a screenshot.

    python scripts/report_screenshot.py runs/quickstart/report.html docs/report-screenshot.png

Drives the system Chromium (Debian's `chromium` package) through Playwright, so no browser is
downloaded. The report test runs this script and checks the JSON it prints; the README's
screenshot is made with it from the quickstart's report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# no network, no sandbox (containers run as root), no GPU, none of Chromium's background services
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

# what the page shows once rendered: counts, and whether every plot image actually decoded
PROBE = """() => ({
  title: document.title,
  tables: document.querySelectorAll('table').length,
  metric_rows: document.querySelectorAll('#eval-metrics tr, #train-metrics tr').length,
  images: document.querySelectorAll('img').length,
  images_decoded: [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length,
  svgs: document.querySelectorAll('svg').length,
  best_cells: document.querySelectorAll('td.best').length,
  gap_notes: document.querySelectorAll('.gap, .gapnote').length,
  sample_tables: document.querySelectorAll('table.sample').length,
  scripts: document.querySelectorAll('script').length,
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
             .filter(u => !u.startsWith('data:') && !u.startsWith('#')),
})"""


def inspect(report: Path, screenshot: Path | None = None, width: int = 1280, height: int = 1700) -> dict:
    """The probe's result for `report`, plus any request the page tried to make (there should be none)."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.resolve().as_uri(), wait_until="load")
            found = page.evaluate(PROBE)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    found["network_requests"] = requests
    return found


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print(json.dumps(inspect(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None), indent=2))
