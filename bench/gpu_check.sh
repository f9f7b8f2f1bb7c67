#!/usr/bin/env bash
# GPU check (issues 14, 17, 25): one call of the device tool, about 9 minutes, on a machine with no package index.
#
#   First, here:  .venv/bin/python bench/gpu_wheels.py      # -> bench/gpu-wheels/ (ignored, ~45 MiB, checks budget)
#   Then the device tool's `run`, exactly:
#     command:   bash bench/gpu_check.sh
#     carry:     ["bench/gpu-wheels"]
#     timeout_s: 600
#   Everything comes back in $OUT: gpu-check.json (facts, each step's exit / time / figures), gpu-check.log,
#   results.tgz (bench/results/*.json and the runs' summaries).
#
#   Dry run on this CPU (same script, same steps on tiny shapes, without the GPU-only facts):
#     .venv/bin/python bench/gpu_wheels.py --python-version 3.11 --dest bench/gpu-wheels-cp311
#     bash bench/gpu_check.sh --dry-run        # (or GPU_CHECK_DRY=1) results in /tmp/tunelab-gpu-dry.*/out
#   It copies what the device tool would send (tracked and untracked-not-ignored files, the wheel folder) to a
#   temporary folder and runs there, so it writes nothing into this checkout and sees no ../shared.
#
# How it installs: `pip install --no-index --no-deps --target` of every carried wheel (no resolver: gpu_wheels.py
# has checked every requirement against the carried set plus the image), then PYTHONPATH puts them before the
# image's packages, so its CUDA torch and triton stay. Steps, most informative first; each has its own time limit,
# capped by what is left of GPU_CHECK_BUDGET_S (default 540 s; dry: 1500 s, limits 3x); a failed or timed-out
# step is recorded and the next one runs; a step that no longer fits is recorded as skipped:
#   facts            nvidia-smi, torch / CUDA / bf16, which copy of each library is imported, pip check, a 4-bit matmul
#   quickstart-qlora examples/quickstart.yaml (tiny Llama, NF4, precision auto = bf16 on the GPU): tokens/s, peak GPU
#   w3               W3, OpenLLaMA-3B shape, QLoRA r=64, 1024 x batch 2 x 16, kernels auto (Liger), tunelab only
#   w3-kernels-none  the same with training.kernels=none (the Liger comparison)
#   quickstart-bf16  the quickstart without 4-bit: bf16 LoRA
#   quickstart-eval  `tunelab eval` of the QLoRA run
#   grpo             examples/grpo-quickstart.yaml from the QLoRA run (online RL: generation + training on the GPU)
#   ddp-parity       bench/ddp_parity.py --device cuda (2 processes share the one GPU over gloo)
#   w3-reference     W3 with the reference pipeline too (bench/results/w3.json: tunelab vs reference)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY:-0}
IN_COPY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --in-copy) IN_COPY=1 ;;  # internal: the dry run's second stage, inside the copied tree
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done

if [ "$DRY" = 1 ] && [ "$IN_COPY" = 0 ]; then
  WHEELS_SRC=${GPU_WHEELS:-bench/gpu-wheels-cp311}
  [ -d "$WHEELS_SRC" ] || {
    echo "gpu_check: $WHEELS_SRC is missing: run" \
      ".venv/bin/python bench/gpu_wheels.py --python-version 3.11 --dest $WHEELS_SRC" >&2
    exit 2
  }
  [ -x .venv/bin/python ] || {
    echo "gpu_check: the dry run builds its stand-in image from .venv; run make setup" >&2
    exit 2
  }
  WORK=$(mktemp -d /tmp/tunelab-gpu-dry.XXXXXX)
  mkdir -p "$WORK/tree/bench/gpu-wheels" "$WORK/out"
  git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$WORK/tree" 2>/dev/null
  cp -r "$WHEELS_SRC"/. "$WORK/tree/bench/gpu-wheels/"
  # the image's packages, from this venv (CPU torch), for a Python that has none of them
  .venv/bin/python bench/gpu_wheels.py fake-image "$WORK/image/site-packages" || exit 2
  # the interpreter the venv was made from: the tested Python, without the venv's packages
  base=$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3
  echo "gpu_check: dry run in $WORK (results: $WORK/out)"
  OUT="$WORK/out" GPU_CHECK_BASE_PY=${GPU_CHECK_BASE_PY:-$base} GPU_CHECK_IMAGE_PATH="$WORK/image/site-packages" \
    GPU_CHECK_SITE="$WORK/site/site-packages" bash "$WORK/tree/bench/gpu_check.sh" --dry-run --in-copy
  rc=$?
  rm -rf "$WORK/site" "$WORK/image" "$WORK/tree"  # what it made to run; $WORK/out keeps everything it reports
  exit $rc
fi

WHEELS=bench/gpu-wheels
BASE_PY=${GPU_CHECK_BASE_PY:-python3}  # on the device: the image's python, which holds its CUDA torch
# named site-packages as an installed package's folder is: dill (datasets' fingerprints) pickles a module by
# reference only from such a folder or from under sys.prefix, and by value (failing on pyarrow's types) elsewhere
SITE=${GPU_CHECK_SITE:-/tmp/tunelab-gpu/site-packages}
RES=bench/out/gpu-check
# the CPU is slower at the dry run: its step limits are 3x, its budget 1500 s
BUDGET_S=${GPU_CHECK_BUDGET_S:-$([ "$DRY" = 1 ] && echo 1500 || echo 540)}
SCALE=$([ "$DRY" = 1 ] && echo 3 || echo 1)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TUNELAB_CACHE=$PWD/bench/out/tl-cache HF_HOME=$PWD/bench/out/hf TRACKIO_DIR=$PWD/bench/out/trackio
export XDG_CACHE_HOME=$PWD/bench/out/xdg MPLCONFIGDIR=$PWD/bench/out/mpl
[ -d "$WHEELS/shared" ] && export TUNELAB_SHARED=$PWD/$WHEELS/shared
rm -rf "$RES" && mkdir -p "$RES" bench/results "$TUNELAB_CACHE"
LOG=$RES/gpu-check.log
STEPS=$RES/steps.jsonl
: >"$STEPS"
touch "$RES/started"  # results older than this are the tree's own, not this check's
say() { echo "$*" | tee -a "$LOG"; }
started=$(date +%s)
status=0

# record NAME RC SECONDS LIMIT NOTE: one line of steps.jsonl
record() {
  printf '{"step": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS"
}

# step NAME LIMIT COMMAND...: runs under its own timeout, capped by what is left of the budget; never stops the script
step() {
  local name=$1 limit=$(($2 * SCALE)); shift 2
  [ "${NO_GPU:-0}" = 1 ] && { skip "$name" "no CUDA GPU"; status=1; return; }
  local left=$((started + BUDGET_S - $(date +%s)))
  [ "$limit" -gt "$((left - 5))" ] && limit=$((left - 5))
  if [ "$limit" -lt 20 ]; then
    say "--- $name: skipped, ${left}s of the budget left"
    record "$name" null 0 "$limit" "skipped: out of time"
    return
  fi
  local t0=$(date +%s)
  say "--- $name (limit ${limit}s): $(printf '%s ' "$@" | tr '\n' ' ' | cut -c1-240)"
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$? took=$(($(date +%s) - t0))
  local note=""
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out"
  [ "${INFO_ONLY:-0}" = 1 ] && note="informational: does not fail the check"
  say "--- $name: exit $rc after ${took}s $note"
  record "$name" "$rc" "$took" "$limit" "$note"
  [ "$rc" = 0 ] || [ "${INFO_ONLY:-0}" = 1 ] || status=1
}

skip() {  # skip NAME WHY
  say "--- $1: skipped ($2)"
  record "$1" null 0 0 "skipped: $2"
}

commit=$(sed -n 's/^ *"commit": "\(.*\)",$/\1/p' "$WHEELS/manifest.json" 2>/dev/null)  # no .git travels
say "gpu_check: $(date -u +%FT%TZ) commit ${commit:-unknown} (wheels gathered there) dry-run=$DRY"
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1 ||
    say "gpu_check: nvidia-smi failed"
fi

# 1. install the carried wheels in front of the image's packages
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  step install 150 "$BASE_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl
else
  skip install "no $WHEELS/*.whl: run bench/gpu_wheels.py here and carry bench/gpu-wheels"
fi
# src/ first: the tree that travelled is the code measured, even when the carried tunelab wheel is older
export PYTHONPATH=$PWD/src:$SITE${GPU_CHECK_IMAGE_PATH:+:$GPU_CHECK_IMAGE_PATH}${PYTHONPATH:+:$PYTHONPATH}
PY=$BASE_PY
[ -d "$WHEELS/cache/tiny" ] && cp -r "$WHEELS/cache/tiny" "$TUNELAB_CACHE/"

# 2. facts: which copies are imported, CUDA, bf16, a 4-bit matmul; the requirement check of the installed set
FACTS='
import importlib, importlib.metadata as md, json, platform, sys, time
out = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": {}}
for mod, dist in [("torch", "torch"), ("triton", "triton"), ("transformers", "transformers"), ("trl", "trl"),
                  ("peft", "peft"), ("accelerate", "accelerate"), ("datasets", "datasets"),
                  ("bitsandbytes", "bitsandbytes"), ("liger_kernel", "liger-kernel"),
                  ("huggingface_hub", "huggingface-hub"), ("tunelab", "tunelab")]:
    try:
        m = importlib.import_module(mod)
        out["packages"][dist] = {"version": md.version(dist), "from": str(m.__file__).rsplit("/" + mod, 1)[0]}
    except Exception as e:
        out["packages"][dist] = {"error": f"{type(e).__name__}: {e}"[:300]}
import torch
out["torch_cuda"] = torch.version.cuda
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count,
                  "capability": list(torch.cuda.get_device_capability(0)), "bf16": torch.cuda.is_bf16_supported()}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3): a @ a
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): a @ a
    torch.cuda.synchronize()
    out["gpu"]["bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
try:
    import bitsandbytes as bnb
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lin = bnb.nn.Linear4bit(256, 256, compute_dtype=torch.bfloat16, quant_type="nf4").to(dev)
    y = lin(torch.randn(4, 256, device=dev, dtype=torch.bfloat16))
    out["nf4_linear"] = {"ok": bool(torch.isfinite(y).all()), "device": dev}
except Exception as e:
    out["nf4_linear"] = {"error": f"{type(e).__name__}: {e}"[:300]}
print(json.dumps(out, indent=1))
open(sys.argv[1], "w").write(json.dumps(out))
'
step facts 90 "$PY" -c "$FACTS" "$RES/facts.json"
# informational: names what the image lacks or holds at another version (the dry run's stand-in has no triton)
INFO_ONLY=1 step pip-check 30 "$PY" -m pip check

# 3. the workloads
QS_OUT=bench/out/gpu-runs
if [ "$DRY" = 0 ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>>"$LOG"; then
  say "gpu_check: torch sees no CUDA GPU here: the workloads are skipped (bash bench/gpu_check.sh --dry-run on a CPU)"
  NO_GPU=1
fi
if [ "$DRY" = 1 ]; then
  # a few steps on the CPU prove the path; the figures mean nothing
  QS_SMALL=(training.max_steps=2 training.eval_steps=1 training.save_steps=2 samples.num_prompts=4 data.test_size=8
    data.test_rows=8)
  W3=(--dry-run)
  PARITY=(--device cpu --steps 2)
else
  QS_SMALL=()
  W3=()
  PARITY=(--device cuda --steps 6)
fi
step quickstart-qlora 150 "$PY" -m tunelab train examples/quickstart.yaml "output.dir=$QS_OUT" "${QS_SMALL[@]}"
step w3 200 "$PY" bench/run_bench.py w3 "${W3[@]}" --skip-reference
step w3-kernels-none 120 "$PY" bench/run_bench.py w3 "${W3[@]}" --skip-reference --set training.kernels=none
step quickstart-bf16 100 "$PY" -m tunelab train examples/quickstart.yaml "output.dir=$QS_OUT" \
  output.name=quickstart-bf16 quantization.bits=null training.precision=bf16 "${QS_SMALL[@]}"
step quickstart-eval 60 "$PY" -m tunelab eval "$QS_OUT/quickstart"
if [ -f examples/grpo-quickstart.yaml ]; then  # GRPO continues the QLoRA quickstart run's adapter
  step grpo 120 "$PY" -m tunelab train examples/grpo-quickstart.yaml "model.name=$QS_OUT/quickstart" \
    "output.dir=$QS_OUT" "${QS_SMALL[@]}"
else
  skip grpo "no examples/grpo-quickstart.yaml in this tree"
fi
step ddp-parity 150 "$PY" bench/ddp_parity.py "${PARITY[@]}"
step w3-reference 200 "$PY" bench/run_bench.py w3 "${W3[@]}"

# 4. one JSON of everything, and what goes back
say "gpu_check: done in $(($(date +%s) - started))s, exit $status"
SUMMARY='
import glob, json, os, sys
res, dry = sys.argv[1], sys.argv[2] == "1"
started = os.path.getmtime(res + "/started")
def load(p, fresh=False):
    try:
        if fresh and os.path.getmtime(p) < started: return None
        return json.load(open(p))
    except (OSError, ValueError): return None
bundle = load("bench/gpu-wheels/manifest.json") or {}
out = {"dry_run": dry, "commit": bundle.get("commit"), "wheels_python": bundle.get("python_version"),
       "facts": load(res + "/facts.json"), "steps": [json.loads(x) for x in open(res + "/steps.jsonl")]}
keep = ("steps", "tokens_per_s", "train_time_s", "wall_time_s", "peak_gpu_mb", "peak_rss_mb", "mfu", "achieved_tflops",
        "peak_tflops", "final_train_loss", "final_eval_loss", "device", "kernels", "quantization",
        "samples_exact_match_before", "samples_exact_match_after", "heldout_reward_before", "heldout_reward_after")
out["runs"] = {os.path.basename(os.path.dirname(p)): {k: v for k, v in (load(p) or {}).items() if k in keep}
               for p in sorted(glob.glob("bench/out/gpu-runs/*/summary.json"))}
sfx = "-dry" if dry else ""
out["bench"] = {}
parity = "ddp-parity-" + ("cpu" if dry else "cuda")
for name in (f"w3{sfx}-noref", f"w3{sfx}-noref+training.kernels-none", f"w3{sfx}", parity):
    r = load(f"bench/results/{name}.json", fresh=True)
    if r:
        out["bench"][name] = {k: r.get(k) for k in ("medians", "ratios_tunelab_over_reference", "ok", "bench_wall_s")}
json.dump(out, open(res + "/gpu-check.json", "w"), indent=1)
print(json.dumps({s["step"]: s["rc"] for s in out["steps"]}))
'
"$BASE_PY" -c "$SUMMARY" "$RES" "$DRY" 2>&1 | tee -a "$LOG"
find bench/results -name '*.json' -newer "$RES/started" >"$RES/fresh.txt"
tar -czf "$RES/results.tgz" -T "$RES/fresh.txt" bench/out/gpu-runs/*/summary.json bench/out/gpu-runs/*/metrics.jsonl \
  bench/out/gpu-runs/*/eval.json 2>/dev/null
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$RES/gpu-check.json" "$RES/gpu-check.log" "$RES/results.tgz" "$OUT/" 2>/dev/null
fi
exit $status
