#!/usr/bin/env bash
# What the tests drive outside Python, installed when missing (idempotent; part of `make test`):
#   - Debian's chromium, for the report's browser test (tests/e2e/test_report_browser.py);
#   - Debian's golang-go, to render the Ollama Modelfile TEMPLATE with Go's text/template (tests/unit/export/test_gguf.py);
#   - llama.cpp (llama-cpp-python built from source into a venv outside the repo, ~10 min on 2 cores the
#     first time, then cached), to load exported GGUF files (tests/unit/export/test_gguf.py).
# Each step that cannot be done says why and goes on: the tests that need it then skip, naming it.
set -uo pipefail
cd "$(dirname "$0")/.."

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=0
apt_install() {  # apt_install PACKAGE WHAT
  if ! can_apt; then
    echo "note: $1 is missing and this is not root with apt-get; $2 will skip" >&2
    return 0
  fi
  echo "installing $1 for $2 (apt-get)"
  if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null 2>&1; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
    || echo "warning: could not install $1; $2 will skip" >&2
}

[ -x /usr/bin/chromium ] || apt_install chromium "the report's browser test"
command -v go >/dev/null 2>&1 || apt_install golang-go "the Ollama template tests"

t0=$(date +%s)
if scripts/build-llama-cpp.sh > /tmp/tunelab-llama-cpp-build.log 2>&1; then
  tail -n 1 /tmp/tunelab-llama-cpp-build.log
  [ $(( $(date +%s) - t0 )) -gt 5 ] && echo "llama.cpp built in $(( $(date +%s) - t0 )) s"
else
  echo "warning: building llama.cpp failed (log: /tmp/tunelab-llama-cpp-build.log); the llama.cpp tests will skip:" >&2
  tail -n 5 /tmp/tunelab-llama-cpp-build.log >&2
fi
exit 0
