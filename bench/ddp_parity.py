"""Several processes against one: N processes x grad_accum 1 vs 1 process x grad_accum N, same seed and data.

    python bench/ddp_parity.py                      # CPU: 2 processes over gloo (what docs/distributed.md quotes)
    python bench/ddp_parity.py --device cuda        # the GPUs present: one process per GPU over NCCL; with one
                                                    # GPU, 2 processes share it over gloo (the code path, not the link)

Cases: LoRA and QLoRA (4-bit) under DDP on the tiny model; on 2+ GPUs also a full fine-tune under
FSDP2. Each case trains the same config twice, `tunelab train --nproc N` and one process with N
times the accumulation, and compares per-step losses, eval losses and the final weights. Results go to
bench/results/ddp-parity-<device>.json; the exit code is 1 if a case is outside its tolerance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "parity"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-5  # fp32 weights; bf16 ones (QLoRA's adapter) may differ by one bf16 rounding step as well


def cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [PY, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return r, round(time.perf_counter() - t0, 1)


def losses(run: Path, key: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted((run / "final").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def weight_gap(a: dict, b: dict) -> tuple[float, float]:
    """Largest absolute difference, and the largest beyond one rounding step of the weights' dtype."""
    import torch

    worst = beyond = 0.0
    for k in a:
        x, y = a[k].float(), b[k].float()
        diff = (x - y).abs()
        step = torch.finfo(a[k].dtype).eps if a[k].dtype != torch.float32 else 0.0
        worst = max(worst, float(diff.max()))
        beyond = max(beyond, float((diff - step * x.abs()).max()))
    return worst, beyond


def case(name: str, config: Path, nproc: int, device: str, over: list[str]) -> dict:
    one_name, many_name = f"{name}-1x{nproc}", f"{name}-{nproc}x1"

    def train_args(run_name: str) -> list[str]:
        return ["train", str(config), f"output.name={run_name}", "output.overwrite=true", *over]

    # fewer GPUs than processes: they share the GPUs over gloo (NCCL takes one process per GPU)
    extra = ["distributed.backend=gloo"] if device == "cuda" and nproc > gpu_count() else []
    r1, t1 = cli(*train_args(one_name), f"training.grad_accum={nproc}")
    if r1.returncode != 0:
        sys.exit(f"{one_name} failed:\n{r1.stderr[-3000:]}")
    rn, tn = cli(
        *train_args(many_name),
        *extra,
        "--nproc",
        str(nproc),
        env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))},
    )
    if rn.returncode != 0:
        sys.exit(f"{many_name} failed:\n{rn.stderr[-3000:]}")
    runs = OUT / "runs"
    one, many = runs / one_name, runs / many_name
    la, lb = losses(one, "loss"), losses(many, "loss")
    ea, eb = losses(one, "eval_loss"), losses(many, "eval_loss")
    worst, beyond = weight_gap(weights(one), weights(many))
    s = json.loads((many / "summary.json").read_text())
    s1 = json.loads((one / "summary.json").read_text())
    res = {
        "case": name,
        "processes": nproc,
        "strategy": s["strategy"],
        "world_size": s["world_size"],
        "ranks": [
            {
                k: r.get(k)
                for k in (
                    "rank",
                    "device",
                    "trainer_device",
                    "model_device",
                    "tokens",
                    "tokens_per_s",
                    "mfu",
                    "peak_rss_mb",
                    "peak_gpu_mb",
                )
            }
            for r in s["per_rank"]
        ],
        "steps": sorted(lb),
        "max_loss_diff": max(abs(la[k] - lb[k]) for k in la),
        "max_eval_loss_diff": max((abs(ea[k] - eb[k]) for k in ea), default=None),
        "max_weight_diff": worst,
        "max_weight_diff_beyond_rounding": beyond,
        "losses_one_process": [round(la[k], 6) for k in sorted(la)],
        f"losses_{nproc}_processes": [round(lb[k], 6) for k in sorted(lb)],
        "wall_s": {"one_process": t1, f"{nproc}_processes": tn},
        "tokens_per_s": {"one_process": s1["tokens_per_s"], f"{nproc}_processes": s["tokens_per_s"]},
        "global_batch": s["global_batch"],
    }
    wanted_device = "cuda" if device == "cuda" else "cpu"
    res["devices_ok"] = s["world_size"] == nproc and all(
        r["model_device"].startswith(wanted_device) for r in s["per_rank"]
    )
    res["ok"] = bool(
        res["devices_ok"]
        and res["max_loss_diff"] <= LOSS_TOL
        and beyond <= WEIGHT_TOL
        and (res["max_eval_loss_diff"] is None or res["max_eval_loss_diff"] <= LOSS_TOL)
    )
    print(json.dumps({k: res[k] for k in ("case", "strategy", "max_loss_diff", "max_weight_diff", "ok")}), flush=True)
    return res


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--nproc", type=int, default=None, help="processes (default: 2 on the CPU, the GPU count (at least 2) on GPUs)"
    )
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TUNELAB_CACHE", str(OUT / "cache"))
    gpus = gpu_count()
    if a.device == "cuda" and not gpus:
        sys.exit("--device cuda: no CUDA GPU visible")
    nproc = a.nproc or (max(2, gpus) if a.device == "cuda" else 2)
    OUT.mkdir(parents=True, exist_ok=True)
    data = OUT / "synth.jsonl"
    subprocess.run(
        [PY, "-m", "tunelab", "synth", "--out", str(data), "--n", "400", "--seed", "5"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    # dropout 0: each rank draws its masks from its own RNG stream, which one process cannot reproduce;
    # fp32 on the GPU too, so that what is compared is the distribution, not mixed-precision rounding
    cfg = {
        "model": {"name": "tiny:llama-2l", "device": a.device if a.device == "cpu" else "cuda", "dtype": "fp32"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": {"path": str(data)}, "test_size": 16},
        "training": {
            "max_steps": a.steps,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 256,
            "learning_rate": 1e-3,
            "eval_steps": a.steps // 2,
            "save_steps": a.steps // 2,
            "gradient_checkpointing": False,
            "precision": "fp32",
        },
        "samples": {"num_prompts": 4, "max_new_tokens": 8},
        "tracking": {"backend": "none"},
        "output": {"dir": str(OUT / "runs")},
    }
    config = OUT / "parity.yaml"
    config.write_text(yaml.safe_dump(cfg))
    started = time.time()
    cases = [
        case("lora", config, nproc, a.device, []),
        case("qlora", config, nproc, a.device, ["quantization.bits=4", "quantization.compute_dtype=fp32"]),
    ]
    if a.device == "cuda" and gpus >= 2:
        cases.append(
            case(
                "full-fsdp2",
                config,
                nproc,
                a.device,
                ["adapter.type=none", "distributed.strategy=fsdp2", "samples.enabled=false"],
            )
        )
    import torch

    res = {
        "workload": "ddp-parity",
        "device": a.device,
        "gpus": gpus,
        "cases": cases,
        "ok": all(c["ok"] for c in cases),
        "tolerances": {"loss": LOSS_TOL, "weights_beyond_rounding": WEIGHT_TOL},
        "date": dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if gpus else None,
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "command": " ".join(["python", "bench/ddp_parity.py", *sys.argv[1:]]),
        "bench_wall_s": round(time.time() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ddp-parity-{a.device}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({"ok": res["ok"], "results": str(RESULTS / f"ddp-parity-{a.device}.json")}))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
