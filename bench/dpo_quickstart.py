"""The README's DPO figures, measured: `tunelab train examples/dpo-quickstart.yaml`, and what it changed.

    python bench/dpo_quickstart.py       # writes bench/results/dpo-quickstart.json

Held-out preference accuracy (chosen answer likelier than the rejected one) and sample exact match,
before and after the run, from its summary.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quickstart import cpu_model, git_commit  # noqa: E402


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, not a run
    work = Path(tempfile.mkdtemp(prefix="tunelab-dpo-"))
    try:
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "tunelab", "train", "examples/dpo-quickstart.yaml", f"output.dir={work}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds = round(time.perf_counter() - t0, 1)
        if r.returncode != 0:
            sys.exit(f"the DPO example failed ({r.returncode}):\n{r.stderr[-3000:]}")
        s = json.loads((work / "dpo-quickstart" / "summary.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = (
        "preference_accuracy_before",
        "preference_accuracy_after",
        "samples_exact_match_before",
        "samples_exact_match_after",
        "steps",
        "final_train_loss",
        "final_eval_loss",
        "train_time_s",
        "tokens_per_s",
    )
    result = {
        "date": dt.date.today().isoformat(),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "seconds": seconds,
        **{k: s.get(k) for k in keys},
    }
    out = ROOT / "bench" / "results" / "dpo-quickstart.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
