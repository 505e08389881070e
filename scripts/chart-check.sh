#!/usr/bin/env bash
# Checks the Helm chart in charts/latchkey:
#   1. its CRDs are the repository's crds/ (files/crds.yaml is a copy; the rendered CRDs equal crds/ but for the
#      chart's labels and the keep annotation);
#   2. `helm lint` with the default values and with the other switches (namespaced, Ingress, ServiceMonitor,
#      no operator);
#   3. `helm template | kubeconform -strict` for each of those value sets, with the Kubernetes schemas of the PyPI
#      wheel kubernetes-validate (offline, made standalone here) and JSON schemas converted from our CRDs; the
#      ServiceMonitor (a Prometheus Operator CRD) is skipped;
#   4. unless --offline (or no test bed), `helm install --wait` into the test bed's control plane, in a namespace of
#      its own, then `helm uninstall`. The CRDs are server-side applied from crds/ first: the bed's other tests
#      install them without Helm, so the release leaves them to that (crds.install=false).
# Usage: scripts/chart-check.sh [--offline]
# Needs helm and kubeconform on PATH ($HOME/.cache/latchkey/bin: scripts/testenv/build.sh builds them), python3
# with PyYAML, and pip (once, to fetch the schemas into $CACHE/kubernetes-json-schema).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="$ROOT/charts/latchkey"
CACHE="${CACHE:-$HOME/.cache/latchkey}"
export PATH="$CACHE/bin:$PATH"
OFFLINE=0
[[ "${1:-}" == "--offline" ]] && OFFLINE=1
# The newest schemas kubernetes-validate 1.34.0 ships are 1.33's; the bed runs 1.34.
K8S_SCHEMA_VERSION="${K8S_SCHEMA_VERSION:-1.33.0}"
KV_WHEEL_VERSION="${KV_WHEEL_VERSION:-1.34.0}"

say() { printf 'chart-check: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
for tool in helm kubeconform python3; do command -v "$tool" >/dev/null || die "$tool not on PATH (scripts/testenv/build.sh builds helm and kubeconform)"; done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- 1. CRDs in sync -------------------------------------------------------------------------------------------
cmp -s "$ROOT/crds/latchkey.dev_crds.yaml" "$CHART/files/crds.yaml" \
  || die "charts/latchkey/files/crds.yaml differs from crds/latchkey.dev_crds.yaml: cp crds/latchkey.dev_crds.yaml charts/latchkey/files/crds.yaml"
helm template crdcheck "$CHART" --show-only templates/crds.yaml >"$WORK/rendered-crds.yaml"
python3 - "$ROOT/crds/latchkey.dev_crds.yaml" "$WORK/rendered-crds.yaml" <<'EOF' || die "the chart renders CRDs that differ from crds/"
import sys, yaml
def load(p):
    out = {}
    for d in yaml.safe_load_all(open(p)):
        if d:
            d["metadata"].pop("labels", None); d["metadata"].pop("annotations", None)
            out[d["metadata"]["name"]] = d
    return out
want, got = load(sys.argv[1]), load(sys.argv[2])
if want != got:
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k): print(f"  differs: {k}", file=sys.stderr)
    sys.exit(1)
EOF
say "CRDs: chart == crds/ ($(grep -c '^kind: CustomResourceDefinition' "$WORK/rendered-crds.yaml") CRDs)"

# --- 2. lint ---------------------------------------------------------------------------------------------------
VALUE_SETS=(
  "default|"
  "namespaced|--set watchNamespaces={tenant-a,tenant-b,integrations}"
  "exposed|--set ingress.enabled=true --set ingress.className=nginx --set serviceMonitor.enabled=true --set connect.baseUrl=https://connect.example.com --set ingress.tls[0].secretName=tls --set ingress.tls[0].hosts[0]=connect.example.com"
  "rbac-only|--set operator.enabled=false --set crds.install=false"
  "single|--set replicaCount=1 --set leaderElection.enabled=false --set logFormat=text"
  "outbound-configmap|--set outbound.caBundle.configMap=corp-ca --set proxy.httpsProxy=http://proxy.corp.example:3128 --set proxy.httpProxy=http://proxy.corp.example:3128 --set proxy.noProxy=.corp.example\\,10.0.0.0/8"
  "outbound-secret|--set outbound.caBundle.secret=corp-ca --set outbound.caBundle.key=bundle.pem --set proxy.existingSecret=corp-proxy --set proxy.noProxy=.svc"
)
for vs in "${VALUE_SETS[@]}"; do
  name="${vs%%|*}"; args="${vs#*|}"
  # shellcheck disable=SC2086
  helm lint --strict "$CHART" $args >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; die "helm lint ($name)"; }
done
# A bad value is refused by values.schema.json.
if helm lint "$CHART" --set concurrency=0 >/dev/null 2>&1; then die "values.schema.json accepted concurrency=0"; fi
if helm template x "$CHART" --set outbound.caBundle.configMap=a --set outbound.caBundle.secret=b >/dev/null 2>&1; then
  die "the chart accepted a CA bundle from both a ConfigMap and a Secret"
fi
say "helm lint: ${#VALUE_SETS[@]} value sets pass, a bad value is refused"

# --- 3. kubeconform --------------------------------------------------------------------------------------------
SCHEMAS="$CACHE/kubernetes-json-schema/v${K8S_SCHEMA_VERSION}-standalone-strict"
if [[ ! -f "$SCHEMAS/.complete" ]]; then
  say "fetching Kubernetes JSON schemas (PyPI kubernetes-validate==$KV_WHEEL_VERSION) into $SCHEMAS"
  python3 -m pip download --quiet --no-deps --dest "$WORK/wheel" "kubernetes-validate==$KV_WHEEL_VERSION" \
    || die "pip could not fetch kubernetes-validate"
  python3 -m zipfile -e "$WORK"/wheel/kubernetes_validate-*.whl "$WORK/wheel/x"
  # The wheel's schemas reference one shared _definitions.json by absolute $id; kubeconform wants each file
  # standalone, so inline the definitions each kind needs.
  python3 - "$WORK/wheel/x/kubernetes_validate/kubernetes-json-schema/v${K8S_SCHEMA_VERSION}-local-strict" "$SCHEMAS" <<'EOF'
import json, os, re, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
defs = json.load(open(os.path.join(src, "_definitions.json")))["$defs"]
REF = re.compile(r'^(?:/api/_definitions\.json)?#/\$defs/(.+)$')
def rewrite(x, need):
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k == "$ref" and isinstance(v, str) and REF.match(v):
                name = REF.match(v).group(1); need.add(name); out[k] = "#/definitions/" + name
            elif k in ("$id", "$schema"):
                continue
            else:
                out[k] = rewrite(v, need)
        return out
    if isinstance(x, list):
        return [rewrite(v, need) for v in x]
    return x
for f in sorted(os.listdir(src)):
    if not f.endswith(".json") or f.startswith("_") or f == "all.json":
        continue
    need = set(); doc = rewrite(json.load(open(os.path.join(src, f))), need)
    done, out_defs = set(), {}
    while need - done:
        n = (need - done).pop(); done.add(n)
        inner = set(); out_defs[n] = rewrite(defs[n], inner); need |= inner
    if out_defs: doc["definitions"] = out_defs
    json.dump(doc, open(os.path.join(dst, f), "w"), separators=(",", ":"))
open(os.path.join(dst, ".complete"), "w").write("kubernetes-validate\n")
EOF
fi
CRD_SCHEMAS="$WORK/crd-schemas"
python3 - "$ROOT/crds/latchkey.dev_crds.yaml" "$CRD_SCHEMAS" <<'EOF'
# Our CRDs' openAPIV3Schema as kubeconform schemas ({group}/{kind}_{version}.json), with objects that list their
# properties closed (strict), as the apiserver prunes unknown fields there.
import json, os, sys, yaml
def close(x):
    if isinstance(x, dict):
        if x.get("type") == "object" and "properties" in x and "additionalProperties" not in x \
                and not x.get("x-kubernetes-preserve-unknown-fields"):
            x["additionalProperties"] = False
        for v in x.values(): close(v)
    elif isinstance(x, list):
        for v in x: close(v)
for crd in yaml.safe_load_all(open(sys.argv[1])):
    if not crd: continue
    g, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
    for v in crd["spec"]["versions"]:
        s = v["schema"]["openAPIV3Schema"]; close(s)
        s["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
        os.makedirs(os.path.join(sys.argv[2], g), exist_ok=True)
        json.dump(s, open(os.path.join(sys.argv[2], g, f"{kind}_{v['name']}.json"), "w"))
EOF
KC=(kubeconform -strict -summary -kubernetes-version "$K8S_SCHEMA_VERSION"
  -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json"
  -schema-location "$CRD_SCHEMAS/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
  -skip ServiceMonitor)
for vs in "${VALUE_SETS[@]}"; do
  name="${vs%%|*}"; args="${vs#*|}"
  # shellcheck disable=SC2086
  helm template latchkey "$CHART" --namespace latchkey-system $args >"$WORK/$name.yaml"
  "${KC[@]}" "$WORK/$name.yaml" >"$WORK/kc.out" 2>&1 || { cat "$WORK/kc.out" >&2; die "kubeconform ($name)"; }
  say "kubeconform ($name): $(tail -1 "$WORK/kc.out")"
done
# The outbound value sets put the CA bundle and the proxy where the operator reads them.
python3 - "$WORK/outbound-configmap.yaml" "$WORK/outbound-secret.yaml" "$WORK/default.yaml" <<'EOF' || die "the rendered Deployment lacks the CA bundle or proxy settings"
import sys, yaml
def operator(p):
    dep = [d for d in yaml.safe_load_all(open(p)) if d and d["kind"] == "Deployment"][0]
    pod = dep["spec"]["template"]["spec"]; c = pod["containers"][0]
    return pod, c, {e["name"]: e for e in c.get("env", [])}
def check(cond, what):
    if not cond: print(f"  {what}", file=sys.stderr); sys.exit(1)
pod, c, env = operator(sys.argv[1])
check(env["LATCHKEY_CA_BUNDLE"]["value"] == "/etc/latchkey/ca/ca.crt", "LATCHKEY_CA_BUNDLE (configMap)")
check({"name": "ca-bundle", "mountPath": "/etc/latchkey/ca", "readOnly": True} in c["volumeMounts"], "the CA bundle's mount")
check({"name": "ca-bundle", "configMap": {"name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in pod["volumes"], "the ConfigMap volume")
check(env["HTTPS_PROXY"]["value"] == "http://proxy.corp.example:3128" and env["HTTP_PROXY"]["value"] == "http://proxy.corp.example:3128", "HTTPS_PROXY/HTTP_PROXY")
check(env["NO_PROXY"]["value"] == ".corp.example,10.0.0.0/8", "NO_PROXY")
pod, c, env = operator(sys.argv[2])
check(env["LATCHKEY_CA_BUNDLE"]["value"] == "/etc/latchkey/ca/bundle.pem", "LATCHKEY_CA_BUNDLE (secret)")
check({"name": "ca-bundle", "secret": {"secretName": "corp-ca", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}} in pod["volumes"], "the Secret volume")
for var in ("HTTPS_PROXY", "HTTP_PROXY"):
    check(env[var].get("valueFrom", {}).get("secretKeyRef") == {"name": "corp-proxy", "key": var, "optional": True}, f"{var} from the Secret")
pod, c, env = operator(sys.argv[3])
check(not ({"LATCHKEY_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} & set(env)) and "volumes" not in pod, "defaults add no CA bundle or proxy")
EOF
say "outbound: the CA bundle is mounted; LATCHKEY_CA_BUNDLE, HTTPS_PROXY, HTTP_PROXY and NO_PROXY are set"
# The examples are custom resources: validate them against the CRD schemas too.
if [[ -d "$ROOT/examples" ]]; then
  "${KC[@]}" -ignore-filename-pattern 'kustomization\.yaml$' "$ROOT/examples" >"$WORK/kc.out" 2>&1 || { cat "$WORK/kc.out" >&2; die "kubeconform (examples)"; }
  say "kubeconform (examples): $(tail -1 "$WORK/kc.out")"
fi

# --- 4. helm install into the test bed -------------------------------------------------------------------------
if [[ $OFFLINE == 1 ]]; then say "offline: skipped helm install"; exit 0; fi
BED="${LATCHKEY_TESTENV_DIR:-$ROOT/.testenv}"
if [[ -z "${KUBECONFIG:-}" ]]; then
  [[ -f "$BED/kubeconfig" ]] || die "no test bed in $BED (make testenv) and no KUBECONFIG; or pass --offline"
  export KUBECONFIG="$BED/kubeconfig"
fi
kubectl version >/dev/null 2>&1 || die "the cluster in $KUBECONFIG does not answer (make testenv)"
NS="latchkey-chart-check-$RANDOM"
REL="chart-check-$RANDOM"
cleanup() {
  helm uninstall "$REL" --namespace "$NS" --wait --timeout 60s >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# The same field manager as scripts/run.sh (make run), so the two never conflict.
kubectl apply --server-side --force-conflicts --field-manager=latchkey-install -f "$ROOT/crds/latchkey.dev_crds.yaml" >/dev/null
kubectl create namespace "$NS" >/dev/null
# kwok runs the pods (no image is pulled), so --wait sees the Deployment become available: probes, Services,
# PDB and RBAC are all accepted by a real 1.34 apiserver.
helm install "$REL" "$CHART" --namespace "$NS" --set crds.install=false --wait --timeout 120s >"$WORK/install.out" \
  || { cat "$WORK/install.out" >&2; die "helm install into the bed"; }
grep -q "kubectl get useractivations" "$WORK/install.out" || die "NOTES.txt missing from helm install's output"
kubectl auth can-i list useractivations.latchkey.dev --all-namespaces \
  --as "system:serviceaccount:$NS:$REL-latchkey" | grep -qx yes || die "the installed ServiceAccount cannot list activations"
kubectl -n "$NS" create configmap corp-ca --from-file=ca.crt="$BED/pki/ca.crt" >/dev/null
helm upgrade "$REL" "$CHART" --namespace "$NS" --set crds.install=false --set 'watchNamespaces={'"$NS"'}' \
  --set outbound.caBundle.configMap=corp-ca --set proxy.httpsProxy=http://proxy.corp.example:3128 --wait --timeout 120s >/dev/null \
  || die "helm upgrade to namespaced values with a CA bundle and a proxy"
say "helm install, upgrade (namespaced) and uninstall into the bed: ok"
