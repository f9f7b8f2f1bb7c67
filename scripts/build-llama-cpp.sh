#!/usr/bin/env bash
# Builds llama.cpp (through llama-cpp-python, from its source distribution) into a venv OUTSIDE the
# repo, so the repo's .venv is never polluted by a second numpy/jinja2 or a CPU-tuned shared library.
# tests/unit/export/test_gguf.py runs that venv's python in a subprocess to load exported GGUF files in real
# llama.cpp; it skips, naming this script, when the venv is absent.
#
#   scripts/build-llama-cpp.sh                      # ~10 min on 2 cores (9.5 min measured); idempotent
#   TUNELAB_LLAMA_CPP_VENV=/opt/lcp scripts/build-llama-cpp.sh
#   LLAMA_CPP_PYTHON_SPEC='llama-cpp-python==0.3.36' scripts/build-llama-cpp.sh
set -euo pipefail

VENV="${TUNELAB_LLAMA_CPP_VENV:-${HOME}/.cache/tunelab/llama-cpp-venv}"
SPEC="${LLAMA_CPP_PYTHON_SPEC:-llama-cpp-python}"
PYTHON="${PYTHON:-python3}"

if [ -x "${VENV}/bin/python" ] && "${VENV}/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already built in ${VENV} ($("${VENV}/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
  exit 0
fi

mkdir -p "$(dirname "${VENV}")"
"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install -q --upgrade pip
# --no-binary: build llama.cpp here from the sdist (no prebuilt wheel of unknown provenance / CPU flags).
# CMAKE_BUILD_PARALLEL_LEVEL uses every core; run it under `nice -n 10` on a shared machine.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "${VENV}/bin/python" -m pip install --no-binary llama-cpp-python "${SPEC}"
"${VENV}/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'built in ${VENV}')"
