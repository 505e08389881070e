#!/usr/bin/env bash
# Builds the test control plane's binaries from the Go module proxy and caches them, keyed by version, under
# ${LATCHKEY_CACHE:-$HOME/.cache/latchkey}. Idempotent: a binary already in the cache is not built again.
# Cold: ~9 minutes on 2 cores (about 5 of them for the Kubernetes binaries). Warm: instant.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
CACHE=${LATCHKEY_CACHE:-$HOME/.cache/latchkey}
BIN="$CACHE/bin"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN"

die() { echo "testenv-build: $*" >&2; exit 1; }
command -v go >/dev/null || die "Go is missing: install Go >= 1.24 (https://go.dev/doc/install or 'apt-get install golang') and run again"
say() { echo "testenv-build: $*" >&2; }
started=$(date +%s)
step() { say "$1 (usually $2; $(( $(date +%s) - started ))s elapsed so far)"; }

# Each versioned tool lives in its own folder; bin/ holds links to the current versions.
have() { [ -x "$CACHE/$1/$2" ]; }
link() { ln -sfn "$CACHE/$1/$2" "$BIN/$2"; }

build_kubernetes() {
  local dir="$CACHE/kubernetes-$K8S_VERSION"
  if have "kubernetes-$K8S_VERSION" kube-apiserver && have "kubernetes-$K8S_VERSION" kubectl; then :; else
    step "building kube-apiserver, kube-controller-manager, kube-scheduler and kubectl $K8S_VERSION" "5 minutes cold"
    local mod; mod=$(mktemp -d); trap 'rm -rf "$mod"' RETURN
    (
      cd "$mod"
      go mod init latchkey.dev/testenv/kubernetes >/dev/null 2>&1
      local gomod; gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
      [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
      local staging=${K8S_VERSION/v1./v0.}
      # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths that a
      # dependent module does not see: replace each with its published tag.
      awk '/^\t?k8s\.io\/[^ ]+ v0\.0\.0$/ { sub(/^\t/, ""); print $1 }' "$gomod" | sort -u | while read -r m; do
        go mod edit -replace "$m=$m@$staging"
      done
      grep -E '^godebug' "$gomod" >> go.mod || true
      go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
      local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
      # Pin every package to the release: a bare package path would resolve to the newest k8s.io/kubernetes.
      local at=""; for p in $pkgs; do at="$at $p@$K8S_VERSION"; done
      go get $at >/dev/null 2>&1 || go get $at
      local maj=${K8S_VERSION#v}; maj=${maj%%.*}
      local min=${K8S_VERSION#v*.}; min=${min%%.*}
      local ld="-s -w"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$maj -X $p.gitMinor=$min -X $p.gitTreeState=clean"
      done
      mkdir -p "$dir.tmp"
      go build -trimpath -ldflags "$ld" -o "$dir.tmp/" $pkgs
    ) || die "building Kubernetes $K8S_VERSION failed (see above); it needs the Go module proxy and ~6 GB of disk"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do link "kubernetes-$K8S_VERSION" $b; done
}

build_etcd() {
  local dir="$CACHE/etcd-$ETCD_VERSION"
  if ! have "etcd-$ETCD_VERSION" etcd; then
    step "building etcd $ETCD_VERSION" "1 minute cold"
    local mod; mod=$(mktemp -d); trap 'rm -rf "$mod"' RETURN
    (
      cd "$mod"
      go mod init latchkey.dev/testenv/etcd >/dev/null 2>&1
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
      mkdir -p "$dir.tmp"
      go build -trimpath -ldflags "-s -w" -o "$dir.tmp/etcd" go.etcd.io/etcd/server/v3
    ) || die "building etcd $ETCD_VERSION failed (see above)"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  link "etcd-$ETCD_VERSION" etcd
}

# go install of a module without replace directives.
install_tool() { # name version package ldflags
  local name=$1 version=$2 pkg=$3 ld=${4:-}
  local dir="$CACHE/$name-$version"
  if ! have "$name-$version" "$name"; then
    step "building $name $version" "1 minute cold"
    mkdir -p "$dir.tmp"
    GOBIN="$dir.tmp" go install -trimpath -ldflags "-s -w $ld" "$pkg@$version" || die "building $name $version failed (see above)"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  link "$name-$version" "$name"
}

build_kubernetes
build_etcd
install_tool kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
hm=${K8S_VERSION#v}; hmaj=${hm%%.*}; hmin=${hm#*.}; hmin=${hmin%%.*}
install_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin"
install_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform
say "all binaries present in $BIN ($(( $(date +%s) - started ))s)"
