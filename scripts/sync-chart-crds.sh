#!/usr/bin/env bash
# Copies crds/latchkey.dev_crds.yaml into the Helm chart (charts/latchkey/files/crds.yaml), which renders it as
# templates so that `helm upgrade` upgrades the CRDs. scripts/chart-check.sh and tests/helm_rbac.rs fail when the
# two differ.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cp "$ROOT/crds/latchkey.dev_crds.yaml" "$ROOT/charts/latchkey/files/crds.yaml"
