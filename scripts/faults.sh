#!/usr/bin/env bash
# `make faults`: the long fault, bad-input and isolation suite on the real control plane, with its figures.
#
# Runs the same tests as `make test` does (tests/faults_*.rs, tests/bad_input.rs, tests/isolation.rs,
# tests/connect_fuzz.rs) with the long settings below (override any of them from the environment), one test at
# a time, then adds up the figures each test left in target/faults/parts/, scans every captured log for every
# secret value the tests registered (target/faults/secrets/, with a positive control per test), and writes
# target/faults/results.json:
#   kills, activations, converged, duplicate_jobs, lost_refresh_tokens, orphaned_secrets, bad_inputs_tried,
#   bad_inputs_mishandled, secret_leaks (+ tests_passed, tests_failed, per-test figures under "tests").
# Exits non-zero when a test failed or a figure that must be 0 is not.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export PATH="${LATCHKEY_CACHE:-$HOME/.cache/latchkey}/bin:$HOME/.cargo/bin:$PATH"
DIR=${LATCHKEY_TESTENV_DIR:-$REPO/.testenv}
export LATCHKEY_TESTENV_DIR=$DIR
export LATCHKEY_FAULTS_ACTIVATIONS=${LATCHKEY_FAULTS_ACTIVATIONS:-1000}
export LATCHKEY_FAULTS_OAUTH=${LATCHKEY_FAULTS_OAUTH:-20}
export LATCHKEY_FAULTS_KILLS=${LATCHKEY_FAULTS_KILLS:-15}
export LATCHKEY_FAULTS_OUTAGE_S=${LATCHKEY_FAULTS_OUTAGE_S:-150}
export LATCHKEY_FAULTS_LEADER_KILLS=${LATCHKEY_FAULTS_LEADER_KILLS:-6}
export LATCHKEY_FAULTS_LEADER_USERS=${LATCHKEY_FAULTS_LEADER_USERS:-6}
export PROPTEST_CASES=${PROPTEST_CASES:-4096}
export LATCHKEY_FAULTS_STRICT=${LATCHKEY_FAULTS_STRICT:-1}
OUT=$REPO/target/faults
T0=$(date +%s)
say() { echo "make faults: $* ($(( $(date +%s) - T0 ))s)" >&2; }
command -v python3 >/dev/null || { echo "make faults: python3 is missing (it adds up the figures)" >&2; exit 1; }

scripts/testenv/build.sh
if [ ! -d tests/oauth-server/node_modules ]; then npm ci --prefix tests/oauth-server --no-audit --no-fund --loglevel=error; fi
say "building"
cargo build --locked --all-targets --quiet
started_bed=0
if ! { [ -f "$DIR/kubeconfig" ] && kubectl --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; }; then
  scripts/testenv/up.sh "$DIR" >/dev/null
  started_bed=1
fi
cleanup() { if [ "$started_bed" = 1 ]; then scripts/testenv/down.sh "$DIR" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

rm -rf "$OUT/parts" "$OUT/secrets"
mkdir -p "$OUT"
say "running: $LATCHKEY_FAULTS_ACTIVATIONS API-key + $LATCHKEY_FAULTS_OAUTH OAuth activations under $LATCHKEY_FAULTS_KILLS kills, a ${LATCHKEY_FAULTS_OUTAGE_S}s provider outage, $LATCHKEY_FAULTS_LEADER_KILLS leader kills, apiserver/etcd restarts, bad input, isolation"
set +e
cargo test --locked --no-fail-fast --test faults_operator --test faults_oauth --test faults_rotation --test faults_control_plane \
  --test bad_input --test isolation --test connect_fuzz -- --test-threads=1 2>&1 | tee "$OUT/run.log"
status=${PIPESTATUS[0]}
set -e

python3 - "$OUT" "$REPO/target/test-logs" "$status" <<'EOF'
import json, os, re, sys, glob
out, logs_dir, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = {}
for p in sorted(glob.glob(os.path.join(out, "parts", "*.json"))):
    with open(p) as f:
        parts[os.path.basename(p)[:-5]] = json.load(f)
def total(key):
    return sum(v.get(key, 0) or 0 for v in parts.values() if isinstance(v.get(key, 0), (int, float)))
# Suite-wide scan: every registered secret value in every captured log; each test's marker must be found.
logs = {p: open(p, errors="replace").read() for p in glob.glob(os.path.join(logs_dir, "*.log"))}
run_log = open(os.path.join(out, "run.log"), errors="replace").read()
scan_leaks, controls_failed = [], []
for p in sorted(glob.glob(os.path.join(out, "secrets", "*.json"))):
    reg = json.load(open(p))
    if not any(reg["marker"] in text for text in logs.values()):
        controls_failed.append(os.path.basename(p))
    for i, s in enumerate(reg["secrets"]):
        for path, text in list(logs.items()) + [("cargo test output", run_log)]:
            if len(s) >= 8 and s in text:
                scan_leaks.append(f"{os.path.basename(p)} secret #{i} in {path}")
passed = sum(int(n) for n in re.findall(r"test result: \w+\. (\d+) passed", run_log))
failed = sum(int(n) for n in re.findall(r"; (\d+) failed", run_log))
results = {
    "kills": total("kills") + total("control_plane_restarts"),
    "activations": total("activations"),
    "converged": total("converged"),
    "expected_to_converge": total("expected_to_converge"),
    "duplicate_jobs": total("duplicate_jobs"),
    "lost_refresh_tokens": total("lost_refresh_tokens"),
    "orphaned_secrets": total("orphaned_secrets"),
    "bad_inputs_tried": total("bad_inputs_tried"),
    "bad_inputs_mishandled": total("bad_inputs_mishandled"),
    "secret_leaks": total("secret_leaks") + len(scan_leaks),
    "isolation_breaches": total("isolation_breaches"),
    "leak_scan_controls_failed": controls_failed,
    "leak_scan_logs": len(logs),
    "tests_passed": passed,
    "tests_failed": failed,
    "cargo_test_status": status,
    "tests": parts,
    "leaks": scan_leaks,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
print()
print("make faults: figures (target/faults/results.json)")
for k in ["kills", "activations", "converged", "expected_to_converge", "duplicate_jobs", "lost_refresh_tokens", "orphaned_secrets",
          "bad_inputs_tried", "bad_inputs_mishandled", "secret_leaks", "isolation_breaches", "tests_passed", "tests_failed"]:
    print(f"  {k:24} {results[k]}")
bad = status != 0 or results["duplicate_jobs"] or results["orphaned_secrets"] or results["bad_inputs_mishandled"] \
    or results["secret_leaks"] or results["isolation_breaches"] or controls_failed
sys.exit(1 if bad else 0)
EOF
