#!/usr/bin/env bash
# `make bench`: the benchmark of scale, cost and a peer side by side (BENCHMARKS.md says how to read it).
#
#   scripts/bench.sh                                  every figure at BENCH_SCALE (default small)
#   FIGURES=converge,eso BENCH_SCALE=full scripts/bench.sh
#   BENCH_RUNS=1 ...                                  fewer runs (default 3; 1 at tiny)
#
# Builds what is missing (the control-plane binaries, the operator and target/release/latchkey-bench in release
# mode, External Secrets Operator v0.16.2 from the Go module proxy when the eso figure runs), then runs the
# figures. Each starts fresh private test beds in target/bench/bed (never the shared .testenv of the tests) and
# stops them; each merges its numbers into target/bench/results.json as it finishes. Prints the table and draws
# target/bench/convergence.png and target/bench/e2e.png (python3 + matplotlib in ~/.cache/latchkey/bench-venv,
# installed from PyPI once).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
CACHE=${LATCHKEY_CACHE:-$HOME/.cache/latchkey}
export PATH="$CACHE/bin:$HOME/.cargo/bin:$PATH"
SCALE=${BENCH_SCALE:-small}
FIGURES=${FIGURES:-bounds,converge,converge_nojob,eso,startup,refresh,connect,connect_e2e}
OUT=$REPO/target/bench
say() { echo "make bench: $*" >&2; }

scripts/testenv/build.sh >&2
say "building the operator and latchkey-bench (release)"
cargo build --release --locked --quiet --bin latchkey --bin latchkey-bench
ESO_ARGS=()
case ",$FIGURES," in *,eso,*)
  ESO_DIR=$(scripts/bench/eso-build.sh)
  ESO_ARGS=(--eso "$ESO_DIR") ;;
esac
mkdir -p "$OUT"
# The bed of a run interrupted earlier.
scripts/testenv/down.sh "$OUT/bed" >/dev/null 2>&1 || true
trap 'scripts/testenv/down.sh "$OUT/bed" >/dev/null 2>&1 || true' EXIT

status=0
target/release/latchkey-bench --scale "$SCALE" --figures "$FIGURES" --out "$OUT/results.json" \
  --operator "$REPO/target/release/latchkey" "${ESO_ARGS[@]}" || status=$?

if [ "${BENCH_PLOT:-1}" = 1 ]; then
  PY=$CACHE/bench-venv/bin/python3
  if [ ! -x "$PY" ] || ! "$PY" -c 'import matplotlib' 2>/dev/null; then
    say "installing matplotlib into $CACHE/bench-venv (PyPI, once)"
    python3 -m venv "$CACHE/bench-venv" && "$CACHE/bench-venv/bin/pip" install -q matplotlib >&2 || true
  fi
  "$PY" scripts/bench/plot.py "$OUT/results.json" "$OUT/convergence.png" >&2 || say "no plot (matplotlib unavailable)"
  "$PY" scripts/bench/plot_e2e.py "$OUT/e2e.png" "$OUT/results.json" >&2 || say "no end-to-end plot"
fi
exit $status
