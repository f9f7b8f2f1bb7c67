"""Serving benchmark: `tunelab serve` with continuous batching against one request at a time.

    python bench/serve_bench.py                      # both workloads, 16 clients x 4 requests, 64 new tokens
    python bench/serve_bench.py --workload tiny-lora --rounds 1

Workloads:
- `quickstart`: examples/quickstart.yaml (QLoRA, 4-bit base) trained for `--train-steps` steps into a
  scratch folder (or `--target` / an existing runs/quickstart). Its answers end at EOS after a few
  tokens, so this is the prefill-heavy case.
- `tiny-lora`: tiny:llama-2l with a freshly initialised (random, non-zero) LoRA adapter: it seldom
  emits EOS, so nearly every request generates all `--max-tokens` tokens (the issue's 64-token shape).

Per workload and round (5 by default: the numbers move with whatever else runs on the machine), the
real CLI (`tunelab serve`) is started twice, `--max-batch 1` and `--max-batch N`, in that order, and
`--clients` threads each send `--requests` greedy completions one after another (all start together).
It records tokens/s (completion tokens / wall time), latency p50/p95, errors, and the share of
batched answers identical to the `--max-batch 1` ones. An in-process engine comparison (no HTTP)
follows: one-at-a-time `generate`, tunelab's scheduler, and transformers' continuous batching
(`generate_batch`), on the same prompts.

Results: bench/results/serve.json (docs/performance.md and the README quote it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def uncommitted() -> list[str]:
    """Files of the package that differ from the commit (what was measured is the working tree)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--", "src/tunelab"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return sorted(line[3:] for line in out.splitlines())


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), platform.processor())
    except OSError:
        return platform.processor()


def quickstart_target(scratch: Path, steps: int, env: dict) -> str:
    existing = ROOT / "runs" / "quickstart"
    if (existing / "final").is_dir():
        return str(existing)
    run = scratch / "runs" / "quickstart"
    if not (run / "final").is_dir():
        print(f"training examples/quickstart.yaml for {steps} steps into {run.parent} ...", flush=True)
        cmd = [
            PY,
            "-m",
            "tunelab.cli.main",
            "train",
            str(ROOT / "examples" / "quickstart.yaml"),
            f"training.max_steps={steps}",
            "training.eval_steps=null",
            "samples.enabled=false",
            f"output.dir={run.parent}",
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr[-3000:])
    return str(run)


def tiny_lora_target(scratch: Path) -> str:
    """tiny:llama-2l + a LoRA adapter with random A and B (PEFT's init_lora_weights=False): it changes answers."""
    folder = scratch / "tiny-lora"
    if (folder / "adapter_model.safetensors").is_file():
        return str(folder)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.model.resolve import resolve_model_path

    base = resolve_model_path("tiny:llama-2l")
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(folder)
    return str(folder)


def prompts_for(target: str, n: int) -> list[str]:
    """`n` distinct synthetic instructions in the target's prompt format (Alpaca when nothing says)."""
    from transformers import AutoTokenizer

    from tunelab.config.schema import PromptConfig
    from tunelab.data.synthetic import generate
    from tunelab.inference.prompts import instruction_row, prompt_text
    from tunelab.inference.target import resolve_target
    from tunelab.model.resolve import resolve_model_path

    t = resolve_target(target)
    cfg = t.prompt if t.prompt_known else PromptConfig(format="alpaca")
    tok = AutoTokenizer.from_pretrained(resolve_model_path(t.base))
    return [
        prompt_text(instruction_row(r["instruction"], r.get("input", ""), cfg), cfg, tok) for r in generate(n, seed=11)
    ]


def start_server(target: str, max_batch: int, max_tokens: int, env: dict) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        PY,
        "-m",
        "tunelab.cli.main",
        "serve",
        target,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-tokens-limit",
        str(max_tokens),
    ]
    from tunelab.procs import child_env

    # the server dies with the benchmark (a killed benchmark leaves no server holding the port and memory)
    proc = subprocess.Popen(cmd, env=child_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            sys.exit(proc.stderr.read()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit("server did not come up")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def load_clients(
    url: str, model: str, prompts: list[str], clients: int, max_tokens: int, ignore_eos: bool = False
) -> dict:
    """`clients` threads, each sending its share of `prompts` one after another; answers by prompt index."""
    import httpx

    per = len(prompts) // clients
    answers: dict[int, str] = {}
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            for i in range(c * per, (c + 1) * per):
                t0 = time.perf_counter()
                try:
                    r = http.post(
                        f"{url}/v1/completions",
                        json={
                            "model": model,
                            "prompt": prompts[i],
                            "max_tokens": max_tokens,
                            "temperature": 0,
                            "ignore_eos": ignore_eos,
                        },
                    )
                    r.raise_for_status()
                    body = r.json()
                except Exception as e:  # noqa: BLE001 - counted, not raised: the benchmark reports errors
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    tokens[0] += body["usage"]["completion_tokens"]
                    answers[i] = body["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "wall_s": round(wall, 2),
        "requests": len(prompts),
        "completion_tokens": tokens[0],
        "tokens_per_s": round(tokens[0] / wall, 1),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "errors": len(errors),
        "error_samples": errors[:3],
        "answers": answers,
    }


def served_model(url: str) -> str:
    import httpx

    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    return ids[1] if len(ids) > 1 else ids[0]  # the adapter, not the bare base


def http_rounds(target: str, prompts: list[str], args, env: dict) -> dict:
    rounds = []
    for r in range(args.rounds):
        row = {}
        for max_batch in (1, args.max_batch):
            proc, url = start_server(target, max_batch, args.max_tokens, env)
            try:
                model = served_model(url)
                load_clients(
                    url, model, prompts[: args.clients], args.clients, args.max_tokens, args.ignore_eos
                )  # warm-up, not counted
                row[max_batch] = load_clients(url, model, prompts, args.clients, args.max_tokens, args.ignore_eos)
            finally:
                stop_server(proc)
            m = row[max_batch]
            print(
                f"  round {r + 1} --max-batch {max_batch:>2}: {m['tokens_per_s']:7.1f} tok/s, "
                f"{m['requests_per_s']} req/s, p50 {m['latency_p50_s']} s, "
                f"p95 {m['latency_p95_s']} s, {m['completion_tokens']} tokens, {m['errors']} errors",
                flush=True,
            )
        one, many = row[1], row[args.max_batch]
        same = sum(one["answers"].get(i) == many["answers"].get(i) for i in range(len(prompts)))
        rounds.append(
            {
                "one_at_a_time": {k: v for k, v in one.items() if k != "answers"},
                "batched": {k: v for k, v in many.items() if k != "answers"},
                "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 2),
                "identical_greedy_answers": f"{same}/{len(prompts)}",
            }
        )
        print(
            f"  round {r + 1}: batched / one-at-a-time = {rounds[-1]['speedup']}x, "
            f"identical answers {same}/{len(prompts)}",
            flush=True,
        )
    return {"rounds": rounds, "speedup_median": statistics.median(x["speedup"] for x in rounds)}


def engine_comparison(target: str, prompts: list[str], args) -> dict:
    """Same prompts in-process, no HTTP: one-at-a-time generate, tunelab's scheduler, transformers' generate_batch."""
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from tunelab.inference.generate import GenerationSettings, encode_prompt, generate_one, stop_token_ids
    from tunelab.inference.target import load_target, resolve_target
    from tunelab.model.dense import generation_weights
    from tunelab.serve.batching import BatchScheduler

    torch.set_num_threads(args.threads)
    model, tok = load_target(resolve_target(target))
    ids = [encode_prompt(tok, p) for p in prompts]
    settings = GenerationSettings(max_new_tokens=args.max_tokens, batch_size=1)
    out: dict = {}
    with generation_weights(model):
        t0 = time.perf_counter()
        ref = [generate_one(model, tok, x, settings, dense_weights=False) for x in ids]
        wall = time.perf_counter() - t0
        n = sum(g.completion_tokens for g in ref)
        out["one_at_a_time_generate"] = {"wall_s": round(wall, 2), "tokens_per_s": round(n / wall, 1)}

        from contextlib import nullcontext

        sched = BatchScheduler(model, tok, args.max_batch, lambda _adapter: nullcontext())
        try:
            t0 = time.perf_counter()
            gens = [f.result() for f in [sched.submit(None, x, settings) for x in ids]]
            wall = time.perf_counter() - t0
        finally:
            sched.close()
        same = sum(a.text == b.text for a, b in zip(gens, ref, strict=True))
        out["tunelab_scheduler"] = {
            "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(g.completion_tokens for g in gens) / wall, 1),
            "identical_greedy_answers": f"{same}/{len(ids)}",
            "steps_by_rows": dict(sorted(sched.stats.rows.items())),
        }

        # transformers' continuous batching with the best of the settings tried on this machine (page size
        # 32-256, block sharing on/off, max_batch_tokens 512 or auto); its paged cache is sized for the
        # workload, as its default takes 60 % of free RAM
        longest = max(len(x) for x in ids) + args.max_tokens
        cb = ContinuousBatchingConfig(
            max_requests_per_batch=args.max_batch,
            page_size=256,
            max_batch_tokens=512,
            num_blocks=args.max_batch * (longest // 256 + 2),
        )
        gc = GenerationConfig(
            max_new_tokens=args.max_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids(model, tok),
            pad_token_id=tok.pad_token_id,
        )
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        attn = base.config._attn_implementation
        base.set_attn_implementation("sdpa")  # it takes sdpa, eager or flash, not tunelab's packed attention
        try:
            runs = []
            for _ in range(2):  # the first call also builds the cache
                t0 = time.perf_counter()
                res = list(model.generate_batch(ids, generation_config=gc, continuous_batching_config=cb).values())
                runs.append(time.perf_counter() - t0)
        finally:
            base.set_attn_implementation(attn)
        texts = [tok.decode(r.generated_tokens, skip_special_tokens=True) for r in res]
        n = sum(len(r.generated_tokens) for r in res)
        same = sum(a == b.text for a, b in zip(texts, ref, strict=True))
        out["transformers_generate_batch"] = {
            "wall_s_first": round(runs[0], 2),
            "wall_s": round(runs[1], 2),
            "tokens_per_s": round(n / runs[1], 1),
            "identical_greedy_answers": f"{same}/{len(ids)}",
        }
    for k, v in out.items():
        print(f"  engine {k}: {v}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["quickstart", "tiny-lora", "all"], default="all")
    ap.add_argument("--target", help="quickstart workload: serve this run instead of training one")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--ignore-eos",
        action="store_true",
        help="every answer is --max-tokens long (vLLM's ignore_eos): "
        "the issue's 64-token shape on a model that stops early",
    )
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    ap.add_argument("--skip-engine", action="store_true", help="skip the in-process engine comparison")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = ap.parse_args()

    scratch = Path(tempfile.gettempdir()) / "tunelab-serve-bench"
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TUNELAB_CACHE": os.environ.get("TUNELAB_CACHE", str(scratch / "cache")),
    }
    os.environ.update({k: env[k] for k in ("TUNELAB_CACHE", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")})
    workloads = ["quickstart", "tiny-lora"] if args.workload == "all" else [args.workload]
    load = [round(x, 2) for x in os.getloadavg()]
    result = {
        "benchmark": "serve",
        "date": dt.date.today().isoformat(),
        "commit": git_commit(),
        "uncommitted_files": uncommitted(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "command": " ".join([Path(PY).name, *sys.argv]),
        "setup": {
            "clients": args.clients,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos,
            "max_batch": args.max_batch,
            "rounds": args.rounds,
            "server_torch_threads": args.threads,
            "sampling": "greedy (temperature 0), /v1/completions, not streamed",
        },
        "workloads": {},
    }
    for w in workloads:
        target = (
            (args.target or quickstart_target(scratch, args.train_steps, env))
            if w == "quickstart"
            else tiny_lora_target(scratch)
        )
        prompts = prompts_for(target, args.clients * args.requests)
        print(f"{w}: {target}, {len(prompts)} requests", flush=True)
        entry = {"target": target, "http": http_rounds(target, prompts, args, env)}
        if not args.skip_engine:
            entry["engine"] = engine_comparison(target, prompts, args)
        result["workloads"][w] = entry
    result["load_average_before_after"] = [load, [round(x, 2) for x in os.getloadavg()]]  # the machine may be shared
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
