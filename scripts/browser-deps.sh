#!/usr/bin/env bash
# What the browser test (tests/connect_browser.rs) needs: Debian's headless Chromium at /usr/bin/chromium and the
# npm modules of tests/browser (playwright-core, which drives that Chromium and downloads no browser of its own).
# Idempotent: with both present it does nothing and takes a few milliseconds.
#   - /usr/bin/chromium missing: `apt-get update` then `apt-get install -y chromium` (~30-90 s with its recommended packages; needs root, as CI has).
#   - tests/browser/node_modules missing or older than package-lock.json: `npm ci` there (~5 s).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
say() { echo "browser-deps: $*" >&2; }

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    say "/usr/bin/chromium is missing and this is not root: run 'apt-get update && apt-get install -y chromium' as root"
    exit 1
  fi
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing Debian's chromium for the browser test (apt-get update + install, ~30-90 s)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  /usr/bin/chromium --version >&2
fi

B="$REPO/tests/browser"
if [ ! -d "$B/node_modules/playwright-core" ] || [ "$B/package-lock.json" -nt "$B/node_modules" ]; then
  say "installing tests/browser's npm modules (playwright-core, ~5 s)"
  npm ci --prefix "$B" --no-audit --no-fund --loglevel=error
  touch "$B/node_modules"
fi
