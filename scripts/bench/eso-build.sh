#!/usr/bin/env bash
# Builds External Secrets Operator v0.16.2 (the benchmark's peer) from the Go module proxy, the way
# ../shared/TESTENV.md describes: a wrapper module that requires the release and copies its one `replace`.
# Cached in ~/.cache/latchkey/eso-v0.16.2/{external-secrets,bundle.yaml}; nothing is done when both exist.
#   scripts/bench/eso-build.sh        prints the cache folder on stdout
set -euo pipefail
VERSION=${ESO_VERSION:-v0.16.2}
CACHE=${LATCHKEY_CACHE:-$HOME/.cache/latchkey}
OUT=$CACHE/eso-$VERSION
if [ -x "$OUT/external-secrets" ] && [ -s "$OUT/bundle.yaml" ]; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || { echo "eso-build: go is missing (Go >= 1.24 builds ESO from the module proxy)" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/wrapper.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
T0=$(date +%s)
echo "eso-build: building external-secrets $VERSION from the Go module proxy (cold ~4 min)" >&2
cat > go.mod <<MOD
module latchkey.dev/bench/eso

go 1.24

require github.com/external-secrets/external-secrets $VERSION

replace github.com/Masterminds/sprig/v3 => github.com/external-secrets/sprig/v3 v3.3.0
MOD
echo 'package main' > tools.go
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
go get "github.com/external-secrets/external-secrets@$VERSION" >&2
go build -trimpath -ldflags '-s -w' -o "$OUT/external-secrets.tmp" github.com/external-secrets/external-secrets >&2
MODDIR=$(go list -m -f '{{.Dir}}' "github.com/external-secrets/external-secrets")
cp "$MODDIR/deploy/crds/bundle.yaml" "$OUT/bundle.yaml.tmp"
chmod u+w "$OUT/bundle.yaml.tmp"
mv "$OUT/bundle.yaml.tmp" "$OUT/bundle.yaml"
mv "$OUT/external-secrets.tmp" "$OUT/external-secrets"
echo "eso-build: done in $(( $(date +%s) - T0 ))s: $OUT" >&2
echo "$OUT"
