#!/usr/bin/env bash
# Idempotent: makes a headless Chromium available for tests/e2e/test_browser.py.
# The test drives Chromium through the DevTools protocol with websocket-client (already in the venv),
# so no browser download and no extra Python driver is needed; only the Debian `chromium` package.
#   CHROMIUM  use this browser binary instead of /usr/bin/chromium
set -euo pipefail
browser="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$browser" ]; then
  echo "[setup-browser] using $browser ($("$browser" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup-browser] installing Debian's chromium package (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
  echo "[setup-browser] installed $("$browser" --version 2>/dev/null || echo chromium)"
else
  echo "[setup-browser] no Chromium at $browser and cannot install it here (needs root and apt-get)." >&2
  echo "[setup-browser] install it with: sudo apt-get install chromium   (or set CHROMIUM=/path/to/chrome)" >&2
  echo "[setup-browser] the browser test is skipped until then." >&2
fi
