"""The README's quickstart figures, measured: what `make quickstart` runs, timed, and what it reports.

    python bench/quickstart.py            # writes bench/results/quickstart.json and rewrites the README's tables
    python bench/quickstart.py --cold     # with an empty tiny-model cache (includes building the base)

The README's two quickstart tables are generated from bench/results/quickstart.json (between the
`<!-- quickstart:... -->` markers); tests/unit/project/test_readme_figures.py checks that they agree with it, and
that a fresh quickstart run still gives its figures within tolerance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "quickstart.json"
README = ROOT / "README.md"
TUNELAB = [sys.executable, "-m", "tunelab"]


def cpu_model() -> str:
    """The CPU as the results name it: its model, and AMX where it has it (tunelab.perf.machine reads lscpu)."""
    from tunelab.perf.machine import cpu_info

    info = cpu_info()
    return info.model + (" (AMX)" if info.amx else "")


def git_commit() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from run_bench import git_commit as commit  # the harness's own

    return commit()


def timed(*args: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*TUNELAB, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tunelab {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def measure(cold: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tunelab-quickstart-"))
    env = dict(os.environ)
    if cold:
        env["XDG_CACHE_HOME"] = str(work / "cache")  # an empty cache: the base model is built first
    run = work / "runs" / "quickstart"
    try:
        train_s = timed("train", "examples/quickstart.yaml", f"output.dir={work / 'runs'}", env=env)
        eval_s = timed("eval", str(run), env=env)
        report_s = timed("report", str(run), "-o", str(work / "report.html"), env=env)
        summary = json.loads((run / "summary.json").read_text())
        ev = json.loads((run / "eval.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    models = ev["models"]
    base = next(k for k in models if k != "target")
    pick = ("exact_match", "normalized_exact_match", "rougeL", "bleu", "chrf", "loss", "perplexity", "answer_words")
    return {
        "date": dt.date.today().isoformat(),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cold_cache": cold,
        "seconds": {
            "train": train_s,
            "eval": eval_s,
            "report": report_s,
            "total": round(train_s + eval_s + report_s, 1),
            "training": round(summary["train_time_s"], 1),
        },
        "train": {
            "steps": summary["steps"],
            "tokens_per_s": round(summary["tokens_per_s"]),
            "train_loss": round(summary["final_train_loss"], 3),
            "eval_loss": round(summary["final_eval_loss"], 3),
            "exact_match_before": summary["samples_exact_match_before"],
            "exact_match_after": summary["samples_exact_match_after"],
            "peak_rss_mb": round(summary["peak_rss_mb"]),
        },
        "eval": {
            name: {k: models[key]["metrics"].get(k) for k in pick}
            for name, key in (("tuned", "target"), ("base", base))
        },
        "reference_words": round(ev["data"]["reference_words"], 2),
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def tables(r: dict) -> dict[str, str]:
    """The README's two tables, from a result."""
    s, t = r["seconds"], r["train"]
    where = (
        f"Measured with `python bench/quickstart.py` on {r['cpu']} ({r['cores']} cores), {r['date']}, "
        f"commit {r['commit']}"
    )
    cache = (
        "an empty cache, so including building the base"
        if r["cold_cache"]
        else "the base model already built and cached"
    )
    train = "\n".join(
        [
            f"{where}, with {cache}:",
            "",
            "| | value |",
            "|---|---|",
            f"| `make quickstart` after set-up: train + eval + report | {s['total']:.0f} s |",
            f"| of which `tunelab train examples/quickstart.yaml` | {s['train']} s "
            f"({s['training']} s of it training) |",
            f"| training throughput | {t['tokens_per_s']:,} tokens/s |",
            f"| exact match on 96 held-out prompts, untrained (base + fresh LoRA) "
            f"| **{pct(t['exact_match_before'])}** |",
            f"| exact match after {t['steps']} QLoRA steps (training's sample check) "
            f"| **{pct(t['exact_match_after'])}** |",
            f"| final train / eval loss | {t['train_loss']:.3f} / {t['eval_loss']:.3f} |",
            f"| peak memory | {t['peak_rss_mb'] / 1000:.1f} GB RSS |",
        ]
    )
    tu, ba = r["eval"]["tuned"], r["eval"]["base"]

    def row(label: str, key: str, fmt, diff) -> str | None:
        a, b = tu.get(key), ba.get(key)
        if a is None or b is None:
            return None
        return f"| {label} | {fmt(a)} | {fmt(b)} | {diff(a - b)} |"

    pts = lambda d: f"{100 * d:+.1f} pts"  # noqa: E731
    num = lambda d: f"{d:+.3f}"  # noqa: E731
    words = r.get("reference_words")
    rows = [
        f"`tunelab eval` took {s['eval']} s and `tunelab report` {s['report']} s ({where[0].lower() + where[1:]}):",
        "",
        f"| on 96 held-out prompts | tuned ({t['steps']} QLoRA steps) | base | difference |",
        "|---|---|---|---|",
        row("exact match", "exact_match", lambda v: f"**{pct(v)}**" if v is tu.get("exact_match") else pct(v), pts),
        row("normalized exact match", "normalized_exact_match", pct, pts),
        row("ROUGE-L F1", "rougeL", lambda v: f"{v:.3f}", num),
        row("BLEU", "bleu", lambda v: f"{v:.1f}", lambda d: f"{d:+.1f}"),
        row("chrF", "chrf", lambda v: f"{v:.1f}", lambda d: f"{d:+.1f}"),
        row("loss on the answers", "loss", lambda v: f"{v:.3f}", num),
        row("perplexity on the answers", "perplexity", lambda v: f"{v:.2f}", lambda d: f"{d:+.2f}"),
        row(
            "answer length (words" + (f"; references: {words:.2f})" if words else ")"),
            "answer_words",
            lambda v: f"{v:.2f}",
            lambda d: f"{d:+.2f}",
        ),
    ]
    return {"train": train, "eval": "\n".join(x for x in rows if x is not None)}


def put_tables(text: str, r: dict) -> str:
    for name, body in tables(r).items():
        start, end = f"<!-- quickstart:{name} -->", f"<!-- /quickstart:{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            sys.exit(f"README.md has no {start} ... {end} block")
        text = pattern.sub(lambda _m, b=body, s=start, e=end: f"{s}\n{b}\n{e}", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="empty tiny-model cache (times include building the base)")
    ap.add_argument("--readme-only", action="store_true", help="rewrite the README's tables from the saved result")
    a = ap.parse_args()
    if a.readme_only:
        result = json.loads(RESULT.read_text())
    else:
        result = measure(a.cold)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    README.write_text(put_tables(README.read_text(), result))
    print(f"README.md tables rewritten from {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
