#!/usr/bin/env bash
# GPU check (issues 14 and 17), one script, under 10 minutes, no hub:
#   1. W3: the OpenLLaMA-3B shape (../shared/models/open_llama_3b_v2/config.json, random weights), QLoRA r=64,
#      length 1024, batch 2, with tunelab and with the reference pipeline (bench/run_bench.py w3);
#   2. the DDP parity test on the GPUs present (bench/ddp_parity.py --device cuda): one process per GPU over
#      NCCL, N processes x grad_accum 1 against one x grad_accum N (LoRA, QLoRA; FSDP2 full fine-tuning with
#      2+ GPUs); on one GPU, 2 processes share it over gloo.
#   3. training.kernels (issue 17): step 1 runs with `auto`, which is Liger's fused RMSNorm / SwiGLU / RoPE when the
#      liger-kernel package is installed (the script tries `pip install --no-deps liger-kernel` first,
#      so the CUDA torch and its Triton stay as they are); W3 then runs again
#      with `training.kernels=none`, tunelab's side only, for the with / without comparison.
# Results: bench/results/w3.json, w3-noref+training.kernels-none.json, ddp-parity-cuda.json, gpu-check.log (and copies
# in $OUT when the device tool runs it).
#
#   bench/gpu_check.sh              # on a CUDA machine with tunelab's environment (make setup TORCH_SPEC=torch==2.13.0+cu128)
#   bench/gpu_check.sh --dry-run    # the same steps on the CPU: W3 on a tiny shape, parity with 2 CPU processes
#
# Needs ../shared (or a copy at ./shared, or $TUNELAB_SHARED): the reference pipeline, the Alpaca demo data and
# the 3B config. PY=... picks the Python (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export TUNELAB_CACHE=${TUNELAB_CACHE:-$PWD/bench/out/tl-cache}
mkdir -p bench/results
LOG=bench/results/gpu-check.log
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
started=$(date +%s)
status=0

if ! "$PY" -c "import tunelab, trl, bitsandbytes, datasets" 2>>"$LOG"; then
  say "gpu_check: $PY lacks tunelab or its dependencies (trl, bitsandbytes, datasets); install them first"
  exit 2
fi
say "gpu_check: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null) python $PY dry-run=$DRY"
if [ "$DRY" = 0 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { say "gpu_check: no CUDA GPU visible (use --dry-run)"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  say "--- $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "--- $name: exit $rc after $(( $(date +%s) - t0 ))s"
  [ "$rc" = 0 ] || status=1
}

if [ "$DRY" = 1 ]; then
  step w3-dry 400 "$PY" bench/run_bench.py w3 --dry-run
  step ddp-parity-cpu 420 "$PY" bench/ddp_parity.py --device cpu
  results="bench/results/w3-dry.json bench/results/ddp-parity-cpu.json"
else
  "$PY" -c "import liger_kernel" 2>/dev/null || "$PY" -m pip install -q --no-deps liger-kernel >>"$LOG" 2>&1 ||
    say "gpu_check: liger-kernel is not installed and could not be installed: both W3 runs go without fused kernels"
  step w3 250 "$PY" bench/run_bench.py w3
  step w3-kernels-none 150 "$PY" bench/run_bench.py w3 --skip-reference --set training.kernels=none
  step ddp-parity 170 "$PY" bench/ddp_parity.py --device cuda --steps 6
  results="bench/results/w3.json bench/results/w3-noref+training.kernels-none.json bench/results/ddp-parity-cuda.json"
fi
say "gpu_check: done in $(( $(date +%s) - started ))s, exit $status"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  for f in $results "$LOG"; do [ -f "$f" ] && cp "$f" "$OUT/"; done
fi
exit $status
