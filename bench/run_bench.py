"""Benchmarks: tunelab against the reference pipeline (../shared/reference/seed_pipeline.py).

    python bench/run_bench.py w1 [--reps 3]      # the tutorial scaled to a CPU, tunelab vs reference
    python bench/run_bench.py w2 [--reps 2]      # matmul-bound LoRA (~60 M params), MFU
    python bench/run_bench.py w3 [--dry-run]     # the OpenLLaMA-3B shape, QLoRA (GPU; dry run = tiny shape)
    python bench/run_bench.py dataprep           # data preparation at 1k / 10k / 100k rows
    python bench/run_bench.py plan [--measure]   # `tunelab plan` estimates against measured peaks (+ held-out runs)

`--set KEY=VALUE` (repeatable; w1, w2, w3) changes tunelab's side of a workload, e.g. `--set training.precision=bf16`
or `--set training.loss_kernel=trl` (what a change was measured against); such variants are saved as
bench/results/<workload>+<key-value,...>.json. `--skip-reference` (w1, w3) runs tunelab's side only.

Each workload runs tunelab and the reference in the same invocation, alternating, and reports
medians and tunelab/reference ratios. Results go to bench/results/<workload>.json; the tables in
docs/performance.md are copied from what this script prints. Needs ../shared (data, reference,
model configs); scratch files go to bench/out/. Every result records the machine: the CPU (model, cores,
AMX / AVX-512) and its fp32 and bf16 matmul peaks (best, median and min of several runs), printed at the start.
bench/profile_w2.py splits a W2 training step into where its time goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a copy inside it (shared/, e.g. on a lent GPU machine, where only the
# checkout travels) or $TUNELAB_SHARED wins
SHARED = Path(
    os.environ.get("TUNELAB_SHARED") or (ROOT / "shared" if (ROOT / "shared").is_dir() else ROOT.parent / "shared")
)
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict:
    """Where the numbers come from, printed and recorded with every result: the CPU (model, cores, AMX /
    AVX-512) and its fp32 and bf16 matmul peaks (best and spread) at this process's thread count."""
    import torch

    from tunelab.perf.machine import cpu_info

    cpu = cpu_info()
    # other work on the cores (a busy machine) shows as a spread of the peaks and as slow small ops
    load = [round(x, 2) for x in os.getloadavg()]
    peaks = {d: peak(d) for d in ("fp32", "bf16")}
    print(f"cpu: {cpu.summary()}; load average {load[0]}", flush=True)
    for p in peaks.values():
        print(f"peak: {p.summary()}", flush=True)
    return {
        "platform": platform.platform(),
        "cpu": cpu.as_dict(),
        "cores": os.cpu_count(),
        "load_avg_1_5_15": load,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "peaks": {d: p.as_dict() for d, p in peaks.items()},
    }


def alpaca_rows() -> list[dict]:
    path = SHARED / "data" / "alpaca_en_demo.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: the benchmarks need ../shared/data")
    return json.loads(path.read_text())


def build_model(name: str, spec_kwargs: dict, texts: list[str]) -> Path:
    from tunelab.model.tiny import TinySpec, build_tiny

    path = OUT / name
    marker = path / "bench_spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec_kwargs:
        return path
    build_tiny(path, TinySpec(**spec_kwargs), texts=texts)
    marker.write_text(json.dumps(spec_kwargs))
    return path


def corpus(rows: list[dict]) -> list[str]:
    from tunelab.data.templates import alpaca_prompt

    return [alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in rows]


def write_split(rows: list[dict], train_n: int, test_n: int, tag: str) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    train, test = OUT / f"{tag}-train.json", OUT / f"{tag}-test.json"
    train.write_text(json.dumps(rows[:train_n]))
    test.write_text(json.dumps(rows[len(rows) - test_n :]))
    return train, test


def run_reference(model: Path, train: Path, test: Path, args: list[str]) -> dict:
    cmd = [
        PY,
        str(SHARED / "reference" / "seed_pipeline.py"),
        "--model",
        str(model),
        "--data",
        str(train),
        "--test-data",
        str(test),
        "--out",
        str(OUT / "ref-run"),
        *args,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if r.returncode != 0:
        sys.exit(f"reference failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def run_tunelab(cfg: dict, name: str) -> dict:
    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    r = subprocess.run(
        [PY, "-m", "tunelab.cli.main", "train", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if r.returncode != 0:
        sys.exit(f"tunelab failed:\n{r.stderr[-3000:]}")
    run = Path(cfg["output"]["dir"]) / cfg["output"]["name"]
    s = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    s["losses"] = [(m["step"], round(m["loss"], 4)) for m in metrics if "loss" in m]
    s["eval_losses"] = [(m["step"], round(m["eval_loss"], 4)) for m in metrics if "eval_loss" in m]
    s["process_wall_s"] = round(time.perf_counter() - t0, 2)
    return s


def peak(dtype: str):
    """The CPU's matmul peak in `dtype` (a tunelab.perf.flops.PeakMeasurement)."""
    from tunelab.perf.flops import measure_peak

    return measure_peak(dtype, "cpu", seconds=2.0)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def tunelab_cfg(model: Path, train: Path, test: Path, name: str, **over) -> dict:
    cfg = {
        "model": {"name": str(model)},
        "quantization": {"bits": 4},
        "adapter": {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "data": {
            "train": {"path": str(train)},
            "test": {"path": str(test)},
            "shuffle": False,
            "train_rows": 512,
            "test_rows": 10,
            "cache_dir": str(OUT / "data-cache"),
        },
        "prompt": {"format": "alpaca", "train_on": "all"},
        "training": {
            "batch_size": 2,
            "grad_accum": 16,
            "learning_rate": 2e-4,
            "max_length": 1024,
            "eval_steps": 2,
            "save_steps": 2,
        },
        "samples": {"num_prompts": 10, "max_new_tokens": 256},
        "output": {"dir": str(OUT / "runs"), "name": name, "overwrite": True},
    }
    for dotted, value in over.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def overrides(variant: dict | None) -> dict:
    """`--set` keys (dotted) as tunelab_cfg keyword overrides."""
    return {k.replace(".", "__"): v for k, v in (variant or {}).items()}


def w1(reps: int, quick: bool, variant: dict | None = None, skip_reference: bool = False) -> dict:
    rows = alpaca_rows()
    model = build_model(
        "w1-model", dict(layers=4, hidden=256, intermediate=704, heads=4, kv_heads=4, vocab=4096), corpus(rows)
    )
    train, test = write_split(rows, 512, 10, "w1")
    extra = ["--max-steps", "1"] if quick else []
    ref_args = [
        "--train-rows",
        "512",
        "--test-rows",
        "10",
        "--max-length",
        "1024",
        "--max-new-tokens",
        "256",
        "--eval-steps",
        "2",
        *extra,
    ]
    over = {"training__max_steps": 1} if quick else {}
    over.update(overrides(variant))
    tl, ref = [], []
    for i in range(reps):
        if not skip_reference:
            print(f"w1 rep {i + 1}/{reps}: reference", flush=True)
            ref.append(run_reference(model, train, test, ref_args))
        print(f"w1 rep {i + 1}/{reps}: tunelab", flush=True)
        name = (
            "w1-variant" if variant else "w1"
        )  # variants keep their own run folders (the plan check reads the plain one)
        tl.append(run_tunelab(tunelab_cfg(model, train, test, name, **over), name))
    return summarize("w1", tl, ref)


def summarize(name: str, tl: list[dict], ref: list[dict]) -> dict:
    def pick(runs, key):
        return median([r.get(key) for r in runs])

    table = {
        "end_to_end_s": (pick(tl, "train_time_s"), pick(ref, "train_wall_s")),
        "train_tokens_per_s": (pick(tl, "tokens_per_s"), pick(ref, "train_tokens_per_s")),
        "sample_generation_s": (pick(tl, "sample_time_s"), pick(ref, "sample_callback_s")),
        "peak_rss_mb": (pick(tl, "peak_rss_mb"), pick(ref, "peak_rss_mb")),
        "process_wall_s": (pick(tl, "process_wall_s"), pick(ref, "process_wall_s")),
    }
    ratios = {k: (round(a / b, 3) if a and b else None) for k, (a, b) in table.items()}
    return {
        "workload": name,
        "medians": {k: {"tunelab": a, "reference": b} for k, (a, b) in table.items()},
        "ratios_tunelab_over_reference": ratios,
        "runs": {"tunelab": tl, "reference": ref},
    }


W2_MODEL = dict(layers=8, hidden=768, intermediate=2048, heads=12, kv_heads=12, vocab=8192)


def w2_inputs(spec: dict | None = None, name: str = "w2-model") -> tuple[Path, Path, Path]:
    """W2's model (built once into bench/out/<name>; `spec` another shape) and its train / test files."""
    rows = alpaca_rows()
    model = build_model(name, spec or W2_MODEL, corpus(rows))
    train, test = write_split(rows, 128, 10, "w2")
    return model, train, test


def w2_cfg(model: Path, train: Path, test: Path, name: str, **over) -> dict:
    """W2's tunelab config: LoRA on an unquantized model, 4 x 512-token rows x 4 accumulated per step."""
    base = dict(
        quantization__bits=None,
        data__train_rows=128,
        training__max_length=512,
        training__batch_size=4,
        training__grad_accum=4,
        training__eval_steps=None,
        training__save_steps=None,
        samples__enabled=False,
    )
    return tunelab_cfg(model, train, test, name, **{**base, **over})


def w2(reps: int, quick: bool, variant: dict | None = None) -> dict:
    model, train, test = w2_inputs()
    results = {}
    over = overrides(variant)
    tag = "-variant" if variant else ""  # variants keep their own run folders (the plan check reads the plain ones)
    for precision in [over.pop("training__precision")] if "training__precision" in over else ("bf16", "fp32"):
        runs = []
        for i in range(reps):
            print(f"w2 {precision} rep {i + 1}/{reps}", flush=True)
            cfg = w2_cfg(
                model,
                train,
                test,
                f"w2-{precision}{tag}",
                training__precision=precision,
                **({"training__max_steps": 1} if quick else {}),
                **over,
            )
            s = run_tunelab(cfg, f"w2-{precision}{tag}")
            p = peak(precision)  # right after the run, at the thread count the run used (torch's default)
            s["peak"], s["peak_flops"] = p.as_dict(), p.best
            s["mfu"] = s["achieved_tflops"] * 1e12 / s["peak_flops"]
            runs.append(s)
        results[precision] = {
            "tokens_per_s": median([r["tokens_per_s"] for r in runs]),
            "achieved_tflops": median([r["achieved_tflops"] for r in runs]),
            "peak_tflops": median([r["peak_flops"] / 1e12 for r in runs]),
            "mfu": median([r["mfu"] for r in runs]),
            "losses": runs[0]["losses"],
            "peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
            "runs": runs,
        }
    return {"workload": "w2", **results}


def w3(dry_run: bool, variant: dict | None = None, skip_reference: bool = False) -> dict:
    """OpenLLaMA-3B architecture with random weights, QLoRA as in the tutorial; dry run: same code, tiny shape."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    rows = alpaca_rows()
    path = OUT / ("w3-dry" if dry_run else "w3-model")
    if not (path / "config.json").is_file():
        tok_dir = build_model(
            "w1-model", dict(layers=4, hidden=256, intermediate=704, heads=4, kv_heads=4, vocab=4096), corpus(rows)
        )
        cfg = AutoConfig.from_pretrained(SHARED / "models" / "open_llama_3b_v2")
        tok = AutoTokenizer.from_pretrained(tok_dir)
        cfg.vocab_size = max(len(tok), 32) if dry_run else cfg.vocab_size
        if dry_run:
            cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads = 128, 352, 2, 4
            cfg.num_key_value_heads = 4
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
        torch.manual_seed(0)
        on_gpu = torch.cuda.is_available() and not dry_run
        with torch.device("cuda" if on_gpu else "cpu"):
            model = LlamaForCausalLM(cfg).to(torch.float16 if on_gpu else torch.float32)
        model.save_pretrained(path)
        tok.save_pretrained(path)  # dry run: vocab follows the small tokenizer; the real run keeps 32000 ids
    train, test = write_split(rows, 999 - 10, 10, "w3")
    n_rows = 64 * 4  # about 64 packed sequences of 1024 with alpaca-length examples
    extra = ["--max-steps", "2"] if dry_run else []
    ref = (
        []
        if skip_reference
        else [
            run_reference(
                path,
                train,
                test,
                [
                    "--train-rows",
                    str(n_rows),
                    "--test-rows",
                    "10",
                    "--max-length",
                    "1024",
                    "--max-new-tokens",
                    "32",
                    "--eval-steps",
                    "1000",
                    *extra,
                ],
            )
        ]
    )
    cfg = tunelab_cfg(
        path,
        train,
        test,
        "w3",
        data__train_rows=n_rows,
        training__eval_steps=None,
        training__save_steps=None,
        samples__enabled=False,
        **({"training__max_steps": 2} if dry_run else {}),
        **overrides(variant),
    )
    tl = run_tunelab(cfg, "w3")
    return {"workload": "w3", "dry_run": dry_run, **summarize("w3", [tl], ref)}


def dataprep() -> dict:
    """Read, validate, template, tokenize (cache miss), then the cached second run, and TRL's packing."""
    out = []
    for n in (1_000, 10_000, 100_000):
        data = OUT / f"synth-{n}.jsonl"
        code = f"""
import json, resource, time, sys
from tunelab.config.schema import RunConfig
from tunelab.data.prepare import prepare_data
from tunelab.data.synthetic import generate, write_jsonl
from transformers import AutoTokenizer
from tunelab.model.resolve import resolve_model_path
write_jsonl(generate({n}, seed=1, unique=False), {str(data)!r})
tok = AutoTokenizer.from_pretrained(resolve_model_path('tiny:llama-2l'))
cfg = RunConfig.model_validate({{'model': {{'name': 'tiny:llama-2l'}}, 'data': {{'train': {{'path': {str(data)!r}}},
      'cache_dir': {str(OUT / "prep-cache")!r}}}, 'training': {{'max_length': 512}}}})
import shutil; shutil.rmtree({str(OUT / "prep-cache")!r}, ignore_errors=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); d = prepare_data(cfg, tok); cold = time.perf_counter() - t
t = time.perf_counter(); d2 = prepare_data(cfg, tok); warm = time.perf_counter() - t
from trl.data_utils import pack_dataset
t = time.perf_counter(); packed = pack_dataset(d.train, 512, 'bfd'); pack = time.perf_counter() - t
print(json.dumps(dict(rows={n}, cold_s=round(cold, 2), cached_s=round(warm, 2), cache_hit=d2.cache_hit,
      pack_s=round(pack, 2), tokens=d.stats['train_tokens'], packed_rows=len(packed),
      peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      rss_before_mb=round(base, 1))))
"""
        r = subprocess.run(
            [PY, "-c", code], capture_output=True, text=True, env={**os.environ, "TUNELAB_CACHE": str(OUT / "tl-cache")}
        )
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(out[-1], flush=True)
    return {"workload": "dataprep", "rows": out}


HELD_OUT = {
    # shapes the planner's CPU constants were not fitted on: more activations, checkpointing, longer rows
    "held-out: W2 model, fp32, batch 8": dict(training__batch_size=8),
    "held-out: W2 model, fp32, batch 8, checkpointing": dict(
        training__batch_size=8, training__gradient_checkpointing=True
    ),
    "held-out: W2 model, bf16, max length 1024": dict(training__precision="bf16", training__max_length=1024),
}


def held_out_runs() -> None:
    """Short runs (2 micro-batches) of the HELD_OUT shapes, for `plan --measure`."""
    model, train, test = w2_inputs()
    for i, (label, over) in enumerate(HELD_OUT.items()):
        print(f"plan --measure: {label}", flush=True)
        base = dict(
            training__grad_accum=1,
            training__max_steps=2,
            data__test=None,
            data__test_rows=None,
            tracking__backend="none",
        )
        cfg = w2_cfg(model, train, test, f"held-out-{i}", **{**base, **over})
        run_tunelab(cfg, f"held-out-{i}")


def plan_check(measure: bool = False) -> dict:
    """`tunelab plan` estimates next to the peaks measured by the latest W1 / W2 results (and held-out runs)."""
    from tunelab.config import build_config
    from tunelab.model.resolve import resolve_model
    from tunelab.perf.plan import estimate

    if measure:
        held_out_runs()
    found = []
    runs = [
        ("w1", OUT / "w1.yaml"),
        ("w2-bf16", OUT / "w2-bf16.yaml"),
        ("w2-fp32", OUT / "w2-fp32.yaml"),
        ("w3-dry", OUT / "w3.yaml"),
    ]
    runs += [(label, OUT / f"held-out-{i}.yaml") for i, label in enumerate(HELD_OUT)]
    for name, cfg_file in runs:
        summary = OUT / "runs" / cfg_file.stem / "summary.json"
        if not cfg_file.is_file() or not summary.is_file():
            continue
        cfg = build_config(yaml.safe_load(cfg_file.read_text()))
        s = json.loads(summary.read_text())
        est = estimate(cfg, resolve_model(cfg), "cpu", checkpointing=bool(s.get("gradient_checkpointing")))
        found.append(
            {
                "workload": name,
                "estimate_mb": round(est.total / 2**20, 1),
                "measured_peak_rss_mb": s["peak_rss_mb"],
                "error_pct": round(100 * (est.total / 2**20 - s["peak_rss_mb"]) / s["peak_rss_mb"], 1),
                "parts_mb": {k: round(v / 2**20, 1) for k, v in est.parts.items()},
            }
        )
    ref_cfg = build_config(yaml.safe_load((ROOT / "examples" / "openllama-3b-alpaca-qlora.yaml").read_text()))
    ref_cfg.model.name = str(SHARED / "models" / "open_llama_3b_v2")
    ref_model = resolve_model(ref_cfg)
    for ck in (True, False):
        est = estimate(ref_cfg, ref_model, "cuda", checkpointing=ck)
        found.append(
            {
                "workload": f"openllama-3b recipe (GPU, checkpointing {'on' if ck else 'off'})",
                "estimate_mb": round(est.total / 2**20, 1),
                "parts_mb": {k: round(v / 2**20, 1) for k, v in est.parts.items()},
            }
        )
    return {"workload": "plan", "checks": found}


def bench_env() -> None:
    """The benchmarks stay offline and keep tunelab's cache in bench/out (what a user set wins)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_CACHE", str(OUT / "tl-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_sets(ap: argparse.ArgumentParser, items: list[str]) -> dict:
    """`--set KEY=VALUE` items as {dotted key: YAML value}; a malformed one is a usage error."""
    variant = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        variant[key] = yaml.safe_load(value)
    return variant


def variant_suffix(items: list[str]) -> str:
    """A variant's result-file suffix: +key-value,... ('' for none)."""
    return "+" + ",".join(items).replace("=", "-").replace("/", "_") if items else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=["w1", "w2", "w3", "dataprep", "plan"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="one optimizer step per run: checks the harness, measures nothing"
    )
    ap.add_argument("--dry-run", action="store_true", help="w3: tiny shape on the CPU, same code path")
    ap.add_argument("--measure", action="store_true", help="plan: first run the held-out shapes (about 3 minutes)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="w1/w2/w3: a tunelab config override for this variant (repeatable), e.g. training.precision=bf16",
    )
    ap.add_argument(
        "--skip-reference", action="store_true", help="w1/w3: run tunelab's side only (variants of tunelab)"
    )
    a = ap.parse_args()
    if a.set and a.workload not in ("w1", "w2", "w3"):
        ap.error("--set applies to w1, w2 and w3 only")
    variant = parse_sets(ap, a.set)
    bench_env()
    host = machine()
    started = time.time()
    if a.workload == "w1":
        res = w1(a.reps, a.quick, variant, a.skip_reference)
    elif a.workload == "w2":
        res = w2(a.reps, a.quick, variant)
    elif a.workload == "w3":
        res = w3(a.dry_run, variant, a.skip_reference)
    elif a.workload == "dataprep":
        res = dataprep()
    else:
        res = plan_check(a.measure)
    res.update(
        date=dt.date.today().isoformat(),
        commit=git_commit(),
        machine=host,
        quick=a.quick,
        command=" ".join(["python", "bench/run_bench.py", *sys.argv[1:]]),
        bench_wall_s=round(time.time() - started, 1),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if a.quick else ("-dry" if a.dry_run else "")
    if a.skip_reference:
        suffix += "-noref"
    if variant:
        res["variant"] = variant
        suffix += variant_suffix(a.set)
    (RESULTS / f"{a.workload}{suffix}.json").write_text(json.dumps(res, indent=2))
    printable = {k: v for k, v in res.items() if k not in ("runs",)}
    print(json.dumps(printable, indent=2, default=str)[:6000])


if __name__ == "__main__":
    main()
