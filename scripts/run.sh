#!/usr/bin/env bash
# `make run`: the operator against the current kubeconfig context; when there is none (or it does not answer),
# against a local control plane started here (built on first use: ~9-15 minutes, then ~8 s), with the CRDs and
# the examples installed. Prints where the connect page is. Ctrl-C stops the operator (the local control plane
# stays up: `make testenv-down` stops it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export PATH="${LATCHKEY_CACHE:-$HOME/.cache/latchkey}/bin:$HOME/.cargo/bin:$PATH"
say() { echo "make run: $*" >&2; }
command -v cargo >/dev/null || { say "cargo is missing: install Rust (https://rustup.rs)"; exit 1; }

local_bed=0
if kubectl version --request-timeout=5s >/dev/null 2>&1 && kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1; then
  say "using the current kubeconfig context: $(kubectl config current-context 2>/dev/null || echo in-cluster)"
else
  say "no reachable cluster in the current kubeconfig: starting a local control plane (first time: builds it, ~9-15 minutes)"
  scripts/testenv/build.sh
  scripts/testenv/up.sh "$REPO/.testenv" >/dev/null
  export KUBECONFIG="$REPO/.testenv/kubeconfig"
  local_bed=1
fi

say "building the operator (first time: ~4 minutes)"
cargo build --locked --quiet
say "installing the CRDs"
kubectl apply --server-side --force-conflicts --field-manager=latchkey-install -f crds/ >/dev/null
OPERATOR_NS=${LATCHKEY_OPERATOR_NAMESPACE:-latchkey-system}
kubectl get namespace "$OPERATOR_NS" >/dev/null 2>&1 || kubectl create namespace "$OPERATOR_NS" >/dev/null
if [ "$local_bed" = 1 ] && [ -d examples ]; then
  say "installing the examples (kubectl apply -k examples/)"
  kubectl apply --server-side --force-conflicts --field-manager=latchkey-examples -k examples/ >/dev/null || say "some examples did not apply (see kubectl apply -k examples/)"
fi
CONNECT_PORT=${LATCHKEY_CONNECT_PORT:-8080}
METRICS_PORT=${LATCHKEY_METRICS_PORT:-9090}
cat >&2 <<MSG
make run: the operator is starting.
  connect page:  http://127.0.0.1:$CONNECT_PORT  (each activation's link: kubectl get useractivations -A -o custom-columns=NAME:.metadata.name,URL:.status.connectUrl)
  metrics:       http://127.0.0.1:$METRICS_PORT/metrics
  look around:   KUBECONFIG=${KUBECONFIG:-~/.kube/config} kubectl get latchkey -A
MSG
exec target/debug/latchkey run \
  --connect-bind "127.0.0.1:$CONNECT_PORT" --connect-base-url "http://127.0.0.1:$CONNECT_PORT" \
  --metrics-bind "127.0.0.1:$METRICS_PORT" --operator-namespace "$OPERATOR_NS"
