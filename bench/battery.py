"""Run the fault and abuse battery (tests/support/battery.py) and record its counts.

    python bench/battery.py            # every case
    python bench/battery.py NAME ...   # some of them

Prints one line per case and writes bench/results/battery.json: date, commit, machine, and the
counts of cases / clean errors / tracebacks / hangs / data lost (and each case's verdict).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import battery  # noqa: E402


def main() -> int:
    names = sys.argv[1:] or None
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunelab-battery-") as d:
        os.environ.setdefault("TUNELAB_CACHE", str(Path(d) / "cache"))
        results = battery.run_all(Path(d), names)
    counts = battery.counts(results)
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": platform.node(),
        "python": platform.python_version(),
        "root": os.geteuid() == 0,
        "seconds": round(time.perf_counter() - t0, 1),
        "counts": counts,
        "cases": {
            n: {"group": battery.GROUPS[n], "verdict": o.verdict, "rc": o.rc, "skipped": o.skipped, "lost": o.lost}
            for n, o in results.items()
        },
    }
    if names is None:
        out = ROOT / "bench" / "results" / "battery.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    print(json.dumps(counts))
    return 0 if counts["clean"] + counts["skipped"] == counts["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
