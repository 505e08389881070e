#!/usr/bin/env bash
# `make test`: everything from a clean clone on a fresh machine. Builds what is missing (control-plane binaries,
# cached by version under ~/.cache/latchkey; the test OAuth server's npm modules; the operator), starts the test
# control plane unless one is already up (and then stops it at the end), runs the unit and integration tests and
# the chart checks, and exits non-zero on any failure.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export PATH="${LATCHKEY_CACHE:-$HOME/.cache/latchkey}/bin:$HOME/.cargo/bin:$PATH"
DIR=${LATCHKEY_TESTENV_DIR:-$REPO/.testenv}
export LATCHKEY_TESTENV_DIR=$DIR
T0=$(date +%s)
say() { echo "make test: $* ($(( $(date +%s) - T0 ))s)" >&2; }
need() { command -v "$1" >/dev/null || { echo "make test: $1 is missing: $2" >&2; exit 1; }; }
need cargo "install Rust (https://rustup.rs)"
need go "install Go >= 1.24 (it builds the test control plane from the Go module proxy)"
need node "install Node.js >= 20 (apt-get install nodejs npm): it runs the test OAuth2 server"
need npm "install npm (apt-get install npm)"
need openssl "install openssl (apt-get install openssl): the test control plane's PKI"

say "control-plane binaries (cold: ~9-15 minutes, cached afterwards in ~/.cache/latchkey)"
scripts/testenv/build.sh

if [ ! -d tests/oauth-server/node_modules ] || [ tests/oauth-server/package-lock.json -nt tests/oauth-server/node_modules ]; then
  say "installing the test OAuth server's npm modules (~20 s)"
  npm ci --prefix tests/oauth-server --no-audit --no-fund --loglevel=error
  touch tests/oauth-server/node_modules
fi
if [ -f scripts/browser-deps.sh ]; then scripts/browser-deps.sh; fi

if command -v rustfmt >/dev/null; then
  cargo fmt --all -- --check >/dev/null || { echo "make test: rustfmt would change files: run cargo fmt --all" >&2; exit 1; }
fi
say "building the operator and the tests (cold: ~4 minutes)"
cargo build --locked --all-targets --quiet

started_bed=0
if ! { [ -f "$DIR/kubeconfig" ] && kubectl --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; }; then
  say "starting the test control plane (~8 s)"
  scripts/testenv/up.sh "$DIR" >/dev/null
  started_bed=1
fi
cleanup() {
  if [ "$started_bed" = 1 ]; then say "stopping the test control plane"; scripts/testenv/down.sh "$DIR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "running unit and integration tests"
cargo test --locked --no-fail-fast -- --test-threads="${LATCHKEY_TEST_THREADS:-2}"

if [ -x scripts/chart-check.sh ]; then
  say "checking the Helm chart"
  KUBECONFIG="$DIR/kubeconfig" scripts/chart-check.sh
fi
say "all tests passed"
