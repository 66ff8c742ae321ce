#!/usr/bin/env bash
# Chromium for the console's browser test (tests/e2e/test_console.py, driven by Playwright): Debian's
# package when absent. Needs root (apt-get). `.ci/run` and `make browser` call it.
set -euo pipefail

# fonts-noto-cjk: the pages are half Chinese; without a CJK font the screenshots show boxes
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then
  echo "browser: installing Chromium and a CJK font from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi
chromium --headless --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1 \
  || { echo "browser: chromium is installed but does not start headless" >&2; exit 1; }
echo "browser: $(chromium --version 2>/dev/null | head -1)"
