"""Head-to-head on W1: tunelab, TRL's `trl sft` CLI and LLaMA-Factory's `llamafactory-cli train`, alternating.

    bash bench/peers_setup.sh                  # once: each peer's own venv under ~/.cache/tunelab/peers
    python bench/peers.py [--reps 2]           # writes peers.json to bench/results/
    python bench/peers.py --smoke              # 2 optimizer steps, 1 rep: proves the three run end to end here;
                                               # bench/results/peers-smoke.json (its timings are not results)
    python bench/peers.py --quant none         # LoRA on the fp32 base for all three (the fallback from 4-bit)
    python bench/peers.py --tools tunelab,trl  # a subset (its own file: peers-tunelab-trl.json)

W1 is bench/run_bench.py's workload: the same tiny Llama folder (bench/out/w1-model, built once by run_bench's
`build_model`), the same 512 train / 10 test rows of ../shared/data/alpaca_en_demo.json, QLoRA r=64 on q/k/v/o,
packing to 1024, batch 2 x accum 16, lr 2e-4 cosine with 10 % warm-up, one epoch, eval and a checkpoint every
2 steps, and (tunelab only: neither peer's CLI can) 10 sample answers of 256 tokens at each eval. Each tool
gets the workload in its own config format (tunelab YAML, `trl sft --config` YAML, LLaMA-Factory YAML); SETTINGS
is the one list of shared values, and DIFFERENCES (written into the results) says what no tool lets us match.

Per run: training tokens/s = the training data's non-padding tokens, counted once from the data for all three
(`data_tokens`: a full epoch trains on each example once; each tool's own count is kept beside it as
`tool_tokens`), over the tool's training time less its evaluation and sample time, read from the tool's own
logs (summary.json / trainer_state.json): the formula tunelab's summary uses. End-to-end = the CLI process's
wall time (start-up, data preparation, model loading, training, saving). Peak RSS = the largest sum of RSS over
the process tree, polled every 0.1 s. The final training loss and the loss curve come from each tool's logs;
curves agree when every step both logged differs by at most CURVE_TOLERANCE nats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as w1  # noqa: E402  (W1's model, data split, tunelab config and machine record: one owner)

PEERS_HOME = Path(os.environ.get("TUNELAB_PEERS") or Path.home() / ".cache" / "tunelab" / "peers")
WORK = w1.OUT / "peers"
# each tool's data cache, emptied when the bench starts: the first rep prepares its data cold, later reps find
# whatever cache the tool keeps (tunelab's tokenized-data cache; datasets' map cache under TRL and LLaMA-Factory)
DATA_CACHES = WORK / "data-caches"
TOOLS = ("tunelab", "trl", "llamafactory")
# W1's shape as run_bench.w1 builds it (it keeps the spec inline): a drift would make build_model rebuild
# bench/out/w1-model under W1's feet, so the two must change together
W1_MODEL = dict(layers=4, hidden=256, intermediate=704, heads=4, kv_heads=4, vocab=4096)

# W1's values, the one place each is spelled; every tool's config below is built from these
SETTINGS = dict(
    train_rows=512,
    test_rows=10,
    lora_r=64,
    lora_alpha=16,
    lora_dropout=0.1,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    max_length=1024,
    batch_size=2,
    grad_accum=16,
    learning_rate=2e-4,
    lr_scheduler="cosine",
    warmup_ratio=0.1,
    epochs=1,
    optimizer="adamw_torch",
    max_grad_norm=1.0,
    weight_decay=0.0,
    max_steps=-1,
    eval_steps=2,
    save_steps=2,
    seed=42,
    gradient_checkpointing=False,  # tunelab's `auto` turns it off for W1 (the plan fits); the peers are told so
    precision="fp32",  # CPU: no mixed precision; bitsandbytes computes in fp32
    samples=10,
    sample_new_tokens=256,
)
# --smoke proves that the three run end to end (data, load, train, eval, checkpoint, save), not how fast: two
# optimizer steps of two micro-batches each, an eval and a checkpoint at step 2
SMOKE = dict(max_steps=2, grad_accum=2)
# W1's random-init model sits near ln(4096) and moves ~0.01 nats a step; a different packing of the same rows
# (LLaMA-Factory's knapsack vs TRL's best-fit decreasing) changes a step's batch and so its loss by about as
# much. Curves within this many nats at every step are the same training; a wrong gradient drifts further.
CURVE_TOLERANCE = 0.03

DIFFERENCES = {
    "data format": "TRL's CLI takes no formatting function: its rows are the tutorial's Alpaca prompt + answer "
    "pre-rendered into a `text` field (loss on all tokens, as W1's train_on: all). LLaMA-Factory's own `alpaca` "
    "template renders an input as `instruction\\ninput`, not the tutorial's `### Input:` block, so its rows are "
    "the same pre-rendered prompt (BOS text in front, EOS text after the answer, as TRL's tokenizer adds them) "
    "with `template: empty` and `train_on_prompt: true`. tunelab reads the Alpaca rows as they are.",
    "packing": "tunelab and TRL pack with TRL's best-fit decreasing into 1024-token rows, each example attending "
    "only to itself; LLaMA-Factory packs with its greedy knapsack (`neat_packing: true`: a block-diagonal "
    "attention mask, so no example attends across another). Same tokens, a different grouping into rows and "
    "steps: per-step losses differ a little, the number of steps may differ by one.",
    "samples at each eval": "tunelab answers 10 test prompts (256 new tokens) at each eval, as W1 and the "
    "tutorial's callback do; neither `trl sft` nor `llamafactory-cli train` can generate during training. "
    "tunelab's sample time is recorded (sample_time_s) and is outside training tokens/s, but inside its "
    "end-to-end time.",
    "LoRA initialisation": "all three seed 42; tunelab and TRL's CLI draw the LoRA A matrices at the same point "
    "of the RNG stream (their curves match to 4 decimals), LLaMA-Factory at another, so its adapter starts from "
    "other random values (B = 0 everywhere: step 1's loss depends only on the data).",
    "bitsandbytes on AVX512-BF16 CPUs": "bitsandbytes 0.50 repacks 4-bit weights for inference on the first "
    "no-grad forward (the first eval) and later backward passes then compute wrong LoRA gradients. tunelab and "
    "the reference turn that repacking off; the peers do not, so with --quant 4 the harness turns it off for "
    "them too (a sitecustomize on their PYTHONPATH sets bitsandbytes' has_avx512bf16 to False): the speed "
    "compared is that of the same, correct arithmetic.",
    "library versions": "tunelab and TRL's CLI run the same releases (transformers 5.25, TRL 1.16, PEFT 0.22, "
    "datasets 5.2); LLaMA-Factory 0.9.5 caps them (transformers 5.6, TRL 0.24, PEFT 0.18.1, datasets 4.0). "
    "All three run torch 2.13.0+cpu and bitsandbytes 0.50.2.",
    "LLaMA-Factory install": "PyPI has only the CUDA builds of torchvision and torchaudio, whose extensions do not "
    "load against torch's CPU build; bench/peers_setup.sh removes torchvision (LLaMA-Factory's text path never "
    "imports it) and torchaudio's compiled libraries (LLaMA-Factory imports torchaudio on every run; it then "
    "imports as pure Python). Nothing on the text SFT path changes.",
    "checkpoints": "all three save every 2 steps; what a checkpoint holds differs (tunelab: adapter + "
    "optimizer + its run files; TRL / LLaMA-Factory: the HF Trainer's checkpoint folder), and tunelab also "
    "writes its final/ model folder, metrics and summary, the peers their final adapter.",
    "data cache": "every tool's data cache starts empty, so rep 1 prepares the data cold; later reps find "
    "what each keeps (tunelab's tokenized-data cache, datasets' map cache under TRL and LLaMA-Factory).",
    "tracking": "tunelab logs to its default tracker (trackio, local); the peers report_to none.",
}


def data_files(model: Path) -> dict[str, Path]:
    """W1's split, as tunelab reads it, and the same rows rendered once for each peer."""
    from transformers import AutoTokenizer

    from tunelab.data.templates import alpaca_prompt
    from tunelab.data.tokens import adds_bos

    rows = w1.alpaca_rows()
    train, test = w1.write_split(rows, SETTINGS["train_rows"], SETTINGS["test_rows"], "w1")
    tok = AutoTokenizer.from_pretrained(model)
    bos = tok.bos_token if adds_bos(tok) else ""  # LLaMA-Factory tokenizes without special tokens
    trl_dir, lf_dir = WORK / "trl-data", WORK / "lf-data"
    for d in (trl_dir, lf_dir):
        d.mkdir(parents=True, exist_ok=True)
    for split, path in (("train", train), ("test", test)):
        split_rows = json.loads(path.read_text())
        rendered = [(alpaca_prompt(r["instruction"], r["input"]), r["output"]) for r in split_rows]
        # datasets names the splits from the file names: `trl sft --dataset_name DIR` finds train and test
        (trl_dir / f"{split}.jsonl").write_text("".join(json.dumps({"text": p + a}) + "\n" for p, a in rendered))
        lf_rows = [{"instruction": bos + p, "input": "", "output": a + tok.eos_token} for p, a in rendered]
        (lf_dir / f"{split}.json").write_text(json.dumps(lf_rows))
    info = {f"w1_{s}": {"file_name": f"{s}.json"} for s in ("train", "test")}
    (lf_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return {"train": train, "test": test, "trl": trl_dir, "lf": lf_dir, "train_tokens": data_tokens(tok, train)}


def data_tokens(tok, train: Path) -> int:
    """The training data's non-padding tokens, the same count for all three tools: every example once, BOS (by
    tunelab's one BOS rule) + prompt + answer + EOS, cut at max_length; a full epoch trains on exactly these."""
    from tunelab.data.templates import alpaca_prompt
    from tunelab.data.tokens import prompt_ids

    rows = json.loads(train.read_text())
    texts = [alpaca_prompt(r["instruction"], r["input"]) + r["output"] for r in rows]
    return sum(min(len(prompt_ids(tok, t)) + 1, SETTINGS["max_length"]) for t in texts)


def tunelab_command(s: dict, model: Path, files: dict, quant: int | None, out: Path) -> list[str]:
    cfg = w1.tunelab_cfg(
        model,
        files["train"],
        files["test"],
        "run",
        quantization__bits=quant,
        training__max_steps=s["max_steps"],
        training__grad_accum=s["grad_accum"],
        training__gradient_checkpointing=s["gradient_checkpointing"],
        training__precision=s["precision"],
        data__cache_dir=str(DATA_CACHES / "tunelab"),
        output__dir=str(out),
    )
    # run_bench's W1 config spells the shared values too; a drift between the two would compare other settings
    checks = {
        "training.batch_size": s["batch_size"],
        "training.grad_accum": s["grad_accum"],
        "training.learning_rate": s["learning_rate"],
        "training.max_length": s["max_length"],
        "training.eval_steps": s["eval_steps"],
        "adapter.r": s["lora_r"],
        "adapter.alpha": s["lora_alpha"],
        "adapter.dropout": s["lora_dropout"],
        "samples.num_prompts": s["samples"],
        "samples.max_new_tokens": s["sample_new_tokens"],
    }
    for dotted, want in checks.items():
        section, key = dotted.split(".")
        if cfg[section][key] != want:
            sys.exit(f"run_bench's W1 config has {dotted}={cfg[section][key]}, peers.SETTINGS {want}: align them")
    path = out / "tunelab.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "tunelab", "train", str(path)]


def trl_command(s: dict, model: Path, files: dict, quant: int | None, out: Path) -> list[str]:
    args = {
        "model_name_or_path": model,
        "dataset_name": files["trl"],
        "dataset_train_split": "train",
        "dataset_test_split": "test",
        "output_dir": out / "trl",
        "use_peft": True,
        "lora_r": s["lora_r"],
        "lora_alpha": s["lora_alpha"],
        "lora_dropout": s["lora_dropout"],
        "lora_target_modules": s["target_modules"],
        "dtype": "float32",
        "bf16": False,  # SFTConfig's default is bf16=True, which on a CPU means bf16 autocast
        "use_cpu": True,
        "packing": True,
        "max_length": s["max_length"],
        "per_device_train_batch_size": s["batch_size"],
        "per_device_eval_batch_size": s["batch_size"],
        "gradient_accumulation_steps": s["grad_accum"],
        "learning_rate": s["learning_rate"],
        "lr_scheduler_type": s["lr_scheduler"],
        "warmup_steps": s["warmup_ratio"],  # transformers 5: a float below 1 is a ratio
        "num_train_epochs": s["epochs"],
        "max_steps": s["max_steps"],
        "optim": s["optimizer"],
        "max_grad_norm": s["max_grad_norm"],
        "weight_decay": s["weight_decay"],
        "gradient_checkpointing": s["gradient_checkpointing"],  # SFTConfig's default is True
        "eval_strategy": "steps",
        "eval_steps": s["eval_steps"],
        "save_strategy": "steps",
        "save_steps": s["save_steps"],
        "logging_steps": 1,
        # TRL's flag parser takes only a bool here; its padding-free rows hold no padding, so all = non-padding
        "include_num_input_tokens_seen": True,
        "seed": s["seed"],
        "report_to": "none",
        "dataloader_num_workers": 0,
    }
    if quant == 4:
        args.update(load_in_4bit=True, bnb_4bit_quant_type="nf4", use_bnb_nested_quant=True)
    path = out / "trl.yaml"
    path.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in args.items()}))
    return [str(PEERS_HOME / "trl-venv" / "bin" / "trl"), "sft", "--config", str(path)]


def lf_command(s: dict, model: Path, files: dict, quant: int | None, out: Path) -> list[str]:
    cfg = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": s["lora_r"],
        "lora_alpha": s["lora_alpha"],
        "lora_dropout": s["lora_dropout"],
        "lora_target": ",".join(s["target_modules"]),
        "dataset_dir": str(files["lf"]),
        "dataset": "w1_train",
        "eval_dataset": "w1_test",
        "template": "empty",
        "train_on_prompt": True,
        "cutoff_len": s["max_length"],
        "packing": True,
        "neat_packing": True,
        "output_dir": str(out / "llamafactory"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": s["batch_size"],
        "per_device_eval_batch_size": s["batch_size"],
        "gradient_accumulation_steps": s["grad_accum"],
        "learning_rate": s["learning_rate"],
        "lr_scheduler_type": s["lr_scheduler"],
        "warmup_steps": s["warmup_ratio"],
        "num_train_epochs": float(s["epochs"]),
        "max_steps": s["max_steps"],
        "optim": s["optimizer"],
        "max_grad_norm": s["max_grad_norm"],
        "weight_decay": s["weight_decay"],
        "disable_gradient_checkpointing": not s["gradient_checkpointing"],  # LLaMA-Factory turns it on by default
        "bf16": False,
        "fp16": False,
        "eval_strategy": "steps",
        "eval_steps": s["eval_steps"],
        "save_strategy": "steps",
        "save_steps": s["save_steps"],
        "logging_steps": 1,
        # a cross-check only: the Trainer's non_padding count sums the attention mask, which neat_packing fills
        # with segment numbers (1, 2, 3, ...); all tokens include the padding of each packed row
        "include_num_input_tokens_seen": True,
        "seed": s["seed"],
        "report_to": "none",
        "plot_loss": False,
        "dataloader_num_workers": 0,
    }
    if quant == 4:
        cfg.update(quantization_bit=4, quantization_method="bnb", quantization_type="nf4", double_quantization=True)
    path = out / "llamafactory.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [str(PEERS_HOME / "llamafactory-venv" / "bin" / "llamafactory-cli"), "train", str(path)]


COMMANDS = {"tunelab": tunelab_command, "trl": trl_command, "llamafactory": lf_command}


def bnb_shim() -> Path:
    """A sitecustomize for the peers' PYTHONPATH that turns bitsandbytes' CPU inference repacking off (see
    DIFFERENCES), the same switch tunelab and the reference flip."""
    shim = WORK / "bnb-shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import importlib.abc, importlib.machinery, sys\n\n\n"
        "class _NoRepack(importlib.abc.MetaPathFinder):\n"
        "    # patch bitsandbytes.nn.modules when (and only if) the peer imports it\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name != 'bitsandbytes.nn.modules':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        spec = importlib.machinery.PathFinder.find_spec(name, path)\n"
        "        load = spec.loader.exec_module\n\n"
        "        def exec_module(module):\n"
        "            load(module)\n"
        "            module.has_avx512bf16 = lambda: False\n\n"
        "        spec.loader.exec_module = exec_module\n"
        "        return spec\n\n\n"
        "sys.meta_path.insert(0, _NoRepack())\n"
    )
    return shim


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and all its descendants, in bytes (0 once it is gone)."""
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0
    return total


def timed_run(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one tool's CLI to the end: its wall time, peak process-tree RSS and exit code; output to `log`."""
    peak = [0]
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=w1.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)

        def poll() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(watched))
                time.sleep(0.1)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        watcher.join()
    return {"rc": rc, "process_wall_s": round(wall, 2), "peak_rss_mb": round(peak[0] / 2**20, 1)}


def trainer_state(out: Path) -> dict:
    """The HF Trainer's state: the output folder's (LLaMA-Factory saves it at the end), else the newest
    checkpoint's (TRL's CLI saves it only there; the Trainer checkpoints at the last step)."""
    final = out / "trainer_state.json"
    if final.is_file():
        return json.loads(final.read_text())
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        sys.exit(f"{out}: no trainer_state.json and no checkpoint: the run wrote no logs")
    return json.loads((ckpts[-1] / "trainer_state.json").read_text())


def from_trainer_state(out: Path) -> dict:
    history = trainer_state(out)["log_history"]
    end = next((h for h in reversed(history) if "train_runtime" in h), {})
    eval_s = sum(h.get("eval_runtime", 0.0) for h in history)
    seen = [h["num_input_tokens_seen"] for h in history if "num_input_tokens_seen" in h]
    return {
        "steps": max((h.get("step", 0) for h in history), default=0),
        "tool_tokens": seen[-1] if seen else None,
        "train_time_s": end.get("train_runtime"),
        "eval_time_s": round(eval_s, 2),
        "sample_time_s": 0.0,
        "losses": [(h["step"], round(h["loss"], 4)) for h in history if "loss" in h],
        "eval_losses": [(h["step"], round(h["eval_loss"], 4)) for h in history if "eval_loss" in h],
    }


def from_tunelab(out: Path) -> dict:
    run = out / "run"
    s = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        "steps": s["steps"],
        "tool_tokens": s.get("session_tokens", s["train_tokens"]),
        "train_time_s": s["train_time_s"],
        "eval_time_s": s["eval_time_s"],
        "sample_time_s": s["sample_time_s"],
        "losses": [(m["step"], round(m["loss"], 4)) for m in metrics if "loss" in m],
        "eval_losses": [(m["step"], round(m["eval_loss"], 4)) for m in metrics if "eval_loss" in m],
    }


def one_run(tool: str, s: dict, model: Path, files: dict, quant: int | None, label: str) -> dict:
    out = WORK / "runs" / tool
    shutil.rmtree(out, ignore_errors=True)  # bench/out/peers is the harness's own scratch
    out.mkdir(parents=True)
    cmd = COMMANDS[tool](s, model, files, quant, out)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(DATA_CACHES / "datasets")}
    if tool != "tunelab" and quant == 4:
        env["PYTHONPATH"] = str(bnb_shim())
    log = WORK / "logs" / f"{label}-{tool}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{label}: {tool}", flush=True)
    measured = timed_run(cmd, env, log)
    if measured["rc"] != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"{tool} failed (exit {measured['rc']}); log {log}:\n{tail}")
    logged = from_tunelab(out) if tool == "tunelab" else from_trainer_state(out / tool)
    # a full epoch trains on the data's tokens, counted once for all three; a partial one (--smoke) on what the
    # tool says it saw (which over-counts LLaMA-Factory's padded rows: smoke figures are no result anyway)
    full = s["max_steps"] == -1
    tokens = files["train_tokens"] if full else logged["tool_tokens"]
    pure = (logged["train_time_s"] or 0) - logged["eval_time_s"] - logged["sample_time_s"]
    tokens_per_s = round(tokens / pure, 1) if tokens and pure > 0 else None
    final = logged["losses"][-1][1] if logged["losses"] else None
    return {
        "tool": tool,
        **measured,
        **logged,
        "train_tokens": tokens,
        "tokens_counted_from": "data" if full else "tool log",
        "train_tokens_per_s": tokens_per_s,
        "final_loss": final,
    }


def curve_gap(a: list, b: list) -> float | None:
    """The largest |loss difference| over the steps both curves logged (None: no common step)."""
    lb = dict(b)
    gaps = [abs(loss - lb[step]) for step, loss in a if step in lb]
    return round(max(gaps), 4) if gaps else None


def summarize(runs: dict[str, list[dict]]) -> dict:
    def med(tool: str, key: str):
        xs = [r[key] for r in runs[tool] if r.get(key) is not None]
        return statistics.median(xs) if xs else None

    keys = ("train_tokens_per_s", "process_wall_s", "peak_rss_mb", "final_loss", "train_tokens", "steps")
    medians = {t: {k: med(t, k) for k in keys} for t in runs}
    curves = {}
    if "tunelab" in runs:
        for tool in (t for t in runs if t != "tunelab"):
            gaps = [curve_gap(a["losses"], b["losses"]) for a, b in zip(runs["tunelab"], runs[tool], strict=True)]
            worst = max((g for g in gaps if g is not None), default=None)
            curves[f"tunelab vs {tool}"] = {
                "max_abs_gap_nats": worst,
                "tolerance_nats": CURVE_TOLERANCE,
                "agree": worst is not None and worst <= CURVE_TOLERANCE,
            }
    peers = [t for t in runs if t != "tunelab"]
    ratios = {}
    if "tunelab" in runs and peers:
        tl = medians["tunelab"]
        fastest = max(peers, key=lambda t: medians[t]["train_tokens_per_s"] or 0)
        quickest = min(peers, key=lambda t: medians[t]["process_wall_s"] or float("inf"))
        leanest = min(peers, key=lambda t: medians[t]["peak_rss_mb"] or float("inf"))
        ratios = {
            "train_tokens_per_s_vs_faster_peer": ratio(
                tl["train_tokens_per_s"], medians[fastest]["train_tokens_per_s"]
            ),
            "faster_peer": fastest,
            "end_to_end_vs_quicker_peer": ratio(tl["process_wall_s"], medians[quickest]["process_wall_s"]),
            "quicker_peer": quickest,
            "peak_rss_vs_leaner_peer": ratio(tl["peak_rss_mb"], medians[leanest]["peak_rss_mb"]),
            "leaner_peer": leanest,
        }
    return {"medians": medians, "ratios_tunelab_over_peer": ratios, "loss_curves": curves}


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def peer_versions(tools: list[str]) -> dict:
    """What each peer's venv runs (checked before the first run: a missing venv stops the bench at once)."""
    found = {}
    pkgs = {
        "trl": ("trl", "transformers", "peft", "torch", "bitsandbytes"),
        "llamafactory": ("llamafactory", "transformers", "trl", "peft", "torch", "bitsandbytes"),
    }
    for tool in (t for t in tools if t != "tunelab"):
        py = PEERS_HOME / f"{tool}-venv" / "bin" / "python"
        if not py.is_file():
            sys.exit(f"{py.parent.parent} is missing: run `bash bench/peers_setup.sh {tool}` first")
        code = (
            "import importlib.metadata as m, json; "
            f"print(json.dumps({{p: m.version(p) for p in {list(pkgs[tool])!r}}}))"
        )
        found[tool] = json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="2 short optimizer steps, 1 rep: measures nothing")
    ap.add_argument("--quant", choices=["4", "none"], default="4", help="4-bit NF4 base (W1) or the fp32 base")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    a = ap.parse_args()
    tools = [t for t in a.tools.split(",") if t]
    if unknown := set(tools) - set(TOOLS):
        ap.error(f"--tools: unknown {sorted(unknown)}; choose from {', '.join(TOOLS)}")
    if a.reps < 1:
        ap.error("--reps: at least 1")
    reps = 1 if a.smoke else a.reps
    quant = None if a.quant == "none" else 4
    w1.bench_env()
    versions = peer_versions(tools)
    host = w1.machine()
    started = time.time()
    shutil.rmtree(DATA_CACHES, ignore_errors=True)
    model = w1.build_model("w1-model", W1_MODEL, w1.corpus(w1.alpaca_rows()))
    files = data_files(model)
    settings = {**SETTINGS, **(SMOKE if a.smoke else {})}
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    order = []
    for rep in range(reps):
        # rotate who goes first, so that no tool always runs on a machine warmed (or heated) by another
        turn = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        order.append(turn)
        for tool in turn:
            runs[tool].append(one_run(tool, settings, model, files, quant, f"rep{rep + 1}"))
            r = runs[tool][-1]
            print(
                f"  {tool}: {r['steps']} steps, {r['train_tokens']} tokens, {r['train_tokens_per_s']} tok/s, "
                f"{r['process_wall_s']} s end to end, {r['peak_rss_mb']} MB peak RSS, final loss {r['final_loss']}",
                flush=True,
            )
    res = {
        "workload": "w1-peers",
        "smoke": a.smoke,
        "quantization": quant,
        **summarize(runs),
        "settings": settings,
        "differences": DIFFERENCES,
        "order": order,
        "peer_versions": versions,
        "runs": runs,
        "date": dt.date.today().isoformat(),
        "commit": w1.git_commit(),
        "machine": host,
        "command": " ".join(["python", "bench/peers.py", *sys.argv[1:]]),
        "bench_wall_s": round(time.time() - started, 1),
    }
    w1.RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ("-smoke" if a.smoke else "") + ("-noquant" if quant is None else "")
    suffix += "" if set(tools) == set(TOOLS) else "-" + "-".join(tools)  # a subset never replaces the full result
    path = w1.RESULTS / f"peers{suffix}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    printable = {k: res[k] for k in ("medians", "ratios_tunelab_over_peer", "loss_curves")}
    print(json.dumps(printable, indent=2))
    print(f"written {path.relative_to(w1.ROOT)}")


if __name__ == "__main__":
    main()
