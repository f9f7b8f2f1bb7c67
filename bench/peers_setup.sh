#!/usr/bin/env bash
# The peers' virtual environments for bench/peers.py, outside the repository (idempotent):
#
#   bash bench/peers_setup.sh            # both peers
#   bash bench/peers_setup.sh trl        # one of them: trl | llamafactory
#
# Each peer gets its own venv under ${TUNELAB_PEERS:-~/.cache/tunelab/peers}/<peer>-venv, with the same torch
# CPU build as tunelab's: torch==2.13.0 resolves to the +cpu wheel this machine keeps on disk, as the Makefile's
# TORCH_SPEC does (an unpinned torch pulls the multi-GB CUDA build from PyPI; the check below refuses any other). A venv whose marker (.installed) holds the same requirement list is left as it is; a half-made one
# (no marker) is removed and made again, so an interrupted run never passes for a finished one.
set -euo pipefail

PEERS_HOME="${TUNELAB_PEERS:-$HOME/.cache/tunelab/peers}"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"

# TRL's CLI on the library versions tunelab's own venv runs, so that the difference measured is the tool,
# not the library release
TRL_REQS="$TORCH trl==1.16.0 transformers==5.25.0 peft==0.22.0 datasets==5.2.0 accelerate==1.16.0 bitsandbytes==0.50.2 psutil"
# LLaMA-Factory's latest release caps transformers<=5.6, peft<=0.18.1, trl<=0.24, datasets<=4.0 and requires
# torchvision / torchaudio; pip resolves those against torch 2.13.0 (torchvision 0.28.0, torchaudio 2.11.1)
LF_REQS="$TORCH llamafactory==0.9.5 bitsandbytes==0.50.2"

# PyPI carries only the CUDA builds of torchvision and torchaudio (the +cpu ones live on PyTorch's own index,
# which this machine cannot reach); against torch's CPU build their extensions fail to load (libc10_cuda.so), and
# LLaMA-Factory imports torchaudio on every run (data/mm_plugin.py) while transformers imports torchvision once it
# is installed. A text-only run needs neither extension: torchvision goes, and torchaudio loses its compiled
# libraries (it then imports as pure Python; only audio decoding would need them). Pulling torch's CUDA build
# instead (same 2.13.0) would add gigabytes of NVIDIA libraries and a second torch build to compare against.
lf_cpu_fixups() {
  local dir="$1"
  "$dir/bin/pip" uninstall -q -y torchvision
  rm -f "$dir"/lib/python3*/site-packages/torchaudio/lib/*.so
}

# make_venv NAME "REQS" FIXUPS CHECK...: the venv, then FIXUPS (a function or `true`), then CHECK must pass
make_venv() {
  local name="$1" reqs="$2" fixups="$3" dir="$PEERS_HOME/$1-venv"
  shift 3
  local marker="$reqs; fixups: $(declare -f "$fixups" 2>/dev/null || echo none)"
  if [[ -f "$dir/.installed" && "$(cat "$dir/.installed")" == "$marker" ]]; then
    echo "$name: up to date in $dir ($(du -sh "$dir" | cut -f1))"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$PEERS_HOME"
  "$PYTHON" -m venv "$dir"
  echo "$name: installing $reqs"
  # the local index mirrors warn about every package they lack; the real errors still show
  # shellcheck disable=SC2086
  if ! "$dir/bin/pip" install -q $reqs 2> >(grep -v "^WARNING: Location" >&2) ||
    ! "$fixups" "$dir" ||
    ! "$dir/bin/python" -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__" ||
    ! "$dir/bin/$@" >/dev/null; then
    echo "$name: the install, the fix-ups or \`$*\` failed, or torch is not 2.13.0+cpu; $dir removed" >&2
    rm -rf "$dir"
    return 1
  fi
  echo "$marker" >"$dir/.installed"
  echo "$name: ready in $dir ($(du -sh "$dir" | cut -f1))"
}

peers=("${@:-trl llamafactory}")
for peer in ${peers[*]}; do
  case "$peer" in
    trl) make_venv trl "$TRL_REQS" true trl sft --help ;;
    llamafactory) make_venv llamafactory "$LF_REQS" lf_cpu_fixups llamafactory-cli version ;;
    *) echo "unknown peer '$peer': expected trl or llamafactory" >&2; exit 2 ;;
  esac
done
