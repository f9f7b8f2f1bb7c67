#!/usr/bin/env bash
# The report test drives the system Chromium (Debian's `chromium` package) in headless mode.
# Install it when it is missing and we may (root, apt-get present); otherwise say so and go on:
# the browser test then skips with the reason.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the report's browser test (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "warning: could not install chromium; the browser test will skip" >&2
else
  echo "note: $CHROMIUM is missing and this is not root with apt-get; the report's browser test will skip" >&2
fi
