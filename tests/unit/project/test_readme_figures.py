"""The README's quickstart figures are a measurement, not prose: its two tables are generated from
bench/results/quickstart.json (`python bench/quickstart.py`), and a fresh quickstart run still gives
that measurement's figures (within what another CPU's rounding can move)."""

import importlib.util
import json

import pytest

from conftest import ROOT, run_cli

RESULT = json.loads((ROOT / "bench" / "results" / "quickstart.json").read_text())


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_quickstart", ROOT / "bench" / "quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_readme_tables_are_the_recorded_measurement():
    readme = (ROOT / "README.md").read_text()
    assert bench_module().put_tables(readme, RESULT) == readme, (
        "README quickstart tables differ from "
        "bench/results/quickstart.json: run python bench/quickstart.py (measure) or --readme-only (rewrite)"
    )


@pytest.mark.slow
def test_a_fresh_quickstart_run_gives_the_readmes_figures(tmp_path):
    r = run_cli("train", str(ROOT / "examples" / "quickstart.yaml"), f"output.dir={tmp_path}", "tracking.backend=none")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    want = RESULT["train"]
    assert s["steps"] == want["steps"]
    # 96 prompts: one answer is 1.04 points; allow a few prompts for another CPU's float rounding
    assert s["samples_exact_match_before"] == pytest.approx(want["exact_match_before"], abs=0.05)
    assert s["samples_exact_match_after"] == pytest.approx(want["exact_match_after"], abs=0.05)
    assert s["final_eval_loss"] == pytest.approx(want["eval_loss"], rel=0.1)
