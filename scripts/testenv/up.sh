#!/usr/bin/env bash
# Starts a real Kubernetes control plane for tests, without Docker, with the binaries that build.sh cached:
# etcd (data on /dev/shm), kube-apiserver (own PKI, RBAC, static tokens, audit log of writes),
# kube-controller-manager, kube-scheduler and kwok with one fake Node that is Ready and untainted.
#
#   scripts/testenv/up.sh [DIR]        DIR defaults to <repo>/.testenv
#
# Prints `export KUBECONFIG=...` and `export PATH=...` (also in DIR/env) on stdout, everything else on stderr:
#   eval "$(scripts/testenv/up.sh)"
# Idempotent: a healthy bed in DIR is reused; a stale one (dead processes) is cleaned and started anew.
# Several beds in different folders run side by side (free ports are picked for each). scripts/testenv/down.sh
# stops exactly what this started.
#
# What DIR holds afterwards:
#   kubeconfig            admin (client certificate, O=system:masters), CA and client cert embedded
#   operator.kubeconfig   token user latchkey-operator (system:masters): a separate name in the audit log
#   unprivileged.kubeconfig, unprivileged-token   token user latchkey-test-user, no groups, no RBAC grants
#   admin-token, operator-token   bearer tokens (admin token user is latchkey-admin, like the certificate)
#   audit.log             one JSON line per create/update/patch/delete (level Metadata, stage ResponseComplete);
#                         $LATCHKEY_TESTENV_AUDIT_POLICY names another policy file (the benchmark's adds Secret GETs)
#   ports                 shell variables ETCD_PORT, APISERVER_PORT, APISERVER_URL, ...
#   pki/                  ca.crt, ca.key, apiserver.crt, admin.crt, sa.key, sa.pub, ...
#   logs/*.log            one per component; pids: "name pid starttime" per process
# Pods: kwok plays their lifecycle from scripts/testenv/kwok-stages.yaml: Job pods end Succeeded, pods
# labelled latchkey.dev/test-outcome=fail end Failed, =hang stay Running (see that file).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DIR=${1:-${LATCHKEY_TESTENV_DIR:-$REPO/.testenv}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
K8S_VERSION=${K8S_VERSION:-v1.34.2}
NODE=latchkey-node
T0=$(date +%s%N)

die() { say "$*"; exit 1; }

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run scripts/testenv/build.sh (make testenv-build)"
done
for t in openssl curl flock setsid; do
  command -v $t >/dev/null || die "$t is missing (apt-get install -y openssl curl util-linux)"
done

# One up.sh at a time per folder; fd 9 is closed for every process started below.
exec 9>"$DIR/.up.lock"
flock -w 300 9 || die "another up.sh has held $DIR/.up.lock for 5 minutes"

print_env() {
  cat "$DIR/env"
  say "up in $DIR ($1); stop it with: scripts/testenv/down.sh $DIR (make testenv-down)"
}

admin_curl() { # PATH: GET on the apiserver as admin, prints the body
  curl -sS --max-time 5 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
    "$APISERVER_URL$1"
}

node_state() { # prints "Ready=<status> taints=<keys>"
  "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" --request-timeout=5s get node "$NODE" \
    -o 'jsonpath=Ready={.status.conditions[?(@.type=="Ready")].status} taints={.spec.taints[*].key}' 2>/dev/null
}
node_ready() { [[ "$(node_state)" == "Ready=True taints=" ]]; }

healthy() {
  [ -f "$DIR/pids" ] && [ -f "$DIR/ports" ] && [ -f "$DIR/kubeconfig" ] && [ -f "$DIR/env" ] || return 1
  local name pid start n=0
  while read -r name pid start; do
    recorded_alive "$start" "$pid" || return 1
    n=$((n + 1))
  done < "$DIR/pids"
  [ "$n" -eq 5 ] || return 1
  . "$DIR/ports"
  [ "$(admin_curl /readyz 2>/dev/null)" = ok ] || return 1
  node_ready
}

if healthy; then
  print_env "already running"
  exit 0
fi
if [ -f "$DIR/pids" ] || [ -f "$DIR/etcd-data-dir" ]; then
  say "the bed in $DIR is not healthy (stale or half started): stopping what is left of it and starting anew"
fi
stop_recorded "$DIR"
clean_state "$DIR"

# ---------------------------------------------------------------------------------------------------------
# Free ports: random ones below the ephemeral range, not listened on now. A port taken between this check and
# the bind makes a component fail with "address already in use": the whole start is then retried.
listening_ports() {
  if command -v ss >/dev/null; then ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }'; fi
}
pick_ports() { # N: prints N distinct free ports
  local used n=$1 out=() p
  used=" $(listening_ports | sort -u | tr '\n' ' ') "
  while [ ${#out[@]} -lt "$n" ]; do
    p=$(( 20000 + RANDOM % 12000 ))
    case "$used" in *" $p "*) continue ;; esac
    case " ${out[*]:-} " in *" $p "*) continue ;; esac
    # A listener we cannot see through ss (another network namespace view) still answers here.
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    out+=("$p")
  done
  echo "${out[@]}"
}

# ---------------------------------------------------------------------------------------------------------
# PKI: EC P-256 keys (fast to generate; Go and rustls take them). Everything is new on each start.
gen_pki() {
  local pki=$DIR/pki
  mkdir -p "$pki"
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key" 2>/dev/null; }
  key ca
  cat > "$pki/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = latchkey-testenv-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -key "$pki/ca.key" -config "$pki/ca.cnf" -days 3650 -out "$pki/ca.crt" 2>/dev/null
  leaf() { # name subject extensions...
    local name=$1 subj=$2; shift 2
    key "$name"
    openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
    printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
      "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" "$@" > "$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -set_serial "0x$(openssl rand -hex 12)" -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
  }
  leaf apiserver "/CN=kube-apiserver" "extendedKeyUsage = serverAuth" \
    "subjectAltName = IP:127.0.0.1, IP:::1, IP:10.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
  leaf admin "/O=system:masters/CN=latchkey-admin" "extendedKeyUsage = clientAuth"
  key sa
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  rm -f "$pki/ca.cnf"
  for f in ca.crt ca.key apiserver.crt apiserver.key admin.crt admin.key sa.key sa.pub; do
    [ -s "$pki/$f" ] || { say "FAILED: openssl did not write $pki/$f"; return 1; }
  done

  local t_admin t_unpriv t_oper t_kcm t_sched t_kwok
  t_admin=$(openssl rand -hex 20); t_unpriv=$(openssl rand -hex 20); t_oper=$(openssl rand -hex 20)
  t_kcm=$(openssl rand -hex 20); t_sched=$(openssl rand -hex 20); t_kwok=$(openssl rand -hex 20)
  ( umask 077
    cat > "$DIR/tokens.csv" <<EOF
$t_admin,latchkey-admin,latchkey-admin,"system:masters"
$t_unpriv,latchkey-test-user,latchkey-test-user
$t_oper,latchkey-operator,latchkey-operator,"system:masters"
$t_kcm,system:kube-controller-manager,system:kube-controller-manager,"system:masters"
$t_sched,system:kube-scheduler,system:kube-scheduler,"system:masters"
$t_kwok,latchkey:kwok,latchkey-kwok,"system:masters"
EOF
    echo "$t_admin" > "$DIR/admin-token"
    echo "$t_unpriv" > "$DIR/unprivileged-token"
    echo "$t_oper" > "$DIR/operator-token"
  )
  mkdir -p "$DIR/kubeconfigs"
  token_kubeconfig "$t_kcm" system:kube-controller-manager > "$DIR/kubeconfigs/kube-controller-manager"
  token_kubeconfig "$t_sched" system:kube-scheduler > "$DIR/kubeconfigs/kube-scheduler"
  token_kubeconfig "$t_kwok" latchkey:kwok > "$DIR/kubeconfigs/kwok"
  token_kubeconfig "$t_oper" latchkey-operator > "$DIR/operator.kubeconfig"
  token_kubeconfig "$t_unpriv" latchkey-test-user > "$DIR/unprivileged.kubeconfig"
  admin_kubeconfig > "$DIR/kubeconfig"
  chmod 600 "$DIR"/kubeconfig "$DIR"/*.kubeconfig "$DIR/kubeconfigs"/*
}

b64() { base64 -w0 < "$1"; }
kubeconfig_head() { # user
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: latchkey-testenv
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(b64 "$DIR/pki/ca.crt")
contexts:
- name: latchkey-testenv
  context:
    cluster: latchkey-testenv
    user: $1
current-context: latchkey-testenv
users:
- name: $1
  user:
EOF
}
admin_kubeconfig() {
  kubeconfig_head latchkey-admin
  echo "    client-certificate-data: $(b64 "$DIR/pki/admin.crt")"
  echo "    client-key-data: $(b64 "$DIR/pki/admin.key")"
}
token_kubeconfig() { # token user
  kubeconfig_head "$2"
  echo "    token: $1"
}

# ---------------------------------------------------------------------------------------------------------
# Processes: each in its own session (a Ctrl-C on the test run leaves the bed alone), stdio to its log, and
# no other file descriptor of ours (the lock, or a pipe of whoever ran up.sh and waits for its end).
launch() { # name cmd...
  local name=$1; shift
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] 2>/dev/null && { exec {fd}>&-; } 2>/dev/null
    done
    exec setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1
  ) &
  local pid=$!
  echo "$name $pid $(proc_start $pid)" >> "$DIR/pids"
}
MILESTONES=""
mark() { MILESTONES="$MILESTONES${MILESTONES:+, }$1 $(elapsed)"; }
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%01ds' $((ms / 1000)) $(( (ms % 1000) / 100 )); }

PORT_CONFLICT=0
# dead_component: prints the name of the first recorded process that is no longer running.
dead_component() {
  local name pid start
  while read -r name pid start; do
    recorded_alive "$start" "$pid" || { echo "$name"; return 0; }
  done < "$DIR/pids"
  return 1
}
# wait_up NAME TIMEOUT_S CHECK...: polls CHECK until it succeeds; fails naming the component whose process
# exited (any of those started so far), or NAME when the time runs out.
wait_up() {
  local name=$1 timeout=$2; shift 2
  local deadline=$(( $(date +%s%N) + timeout * 1000000000 )) dead log
  while ! "$@" >/dev/null 2>&1; do
    if dead=$(dead_component); then
      log="$DIR/logs/$dead.log"
      if grep -qi "address already in use" "$log" 2>/dev/null; then PORT_CONFLICT=1; return 1; fi
      tail -n 15 "$log" | sed 's/^/    /' >&2
      if [ "$dead" = "$name" ]; then say "FAILED: $dead exited before it came up; its log: $log"
      else say "FAILED: $dead exited (while waiting for $name to come up); its log: $log"; fi
      return 1
    fi
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      log="$DIR/logs/$name.log"
      tail -n 15 "$log" | sed 's/^/    /' >&2
      say "FAILED: $name did not come up within ${timeout}s ($WHAT_FOR); its log: $log"
      return 1
    fi
    sleep 0.1
  done
}

start_bed() {
  MILESTONES=""
  mkdir -p "$DIR/logs" "$DIR/certs/kube-controller-manager" "$DIR/certs/kube-scheduler" "$DIR/kwok"
  : > "$DIR/pids"
  local ports; read -r -a ports <<< "$(pick_ports 5)"
  ETCD_PORT=${ports[0]} ETCD_PEER_PORT=${ports[1]} APISERVER_PORT=${ports[2]}
  KCM_PORT=${ports[3]} SCHEDULER_PORT=${ports[4]}
  APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
  cat > "$DIR/ports" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
APISERVER_URL=$APISERVER_URL
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
EOF
  gen_pki || return 1
  mark pki
  cp "${LATCHKEY_TESTENV_AUDIT_POLICY:-$HERE/audit-policy.yaml}" "$DIR/audit-policy.yaml"

  local data=/dev/shm
  [ -d /dev/shm ] && [ -w /dev/shm ] || data=$DIR
  if [ "$data" = /dev/shm ]; then data=$(mktemp -d /dev/shm/latchkey-testenv.XXXXXX); else data=$DIR/etcd-data; mkdir -p "$data"; fi
  echo "$data" > "$DIR/etcd-data-dir"

  launch etcd "$BIN/etcd" --name latchkey --data-dir "$data" --unsafe-no-fsync --log-level warn \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "latchkey=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 8589934592

  WHAT_FOR="etcd at http://127.0.0.1:$ETCD_PORT/health"
  wait_up etcd 20 bash -c "curl -sf --max-time 2 http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'" || return 1
  mark etcd
  local pki=$DIR/pki
  # The audit log is one file, never rotated: the tests and the benchmark read it from an offset. (A maxsize of 0
  # does not mean never: the rotation library then rotates at 100 MB, which a 10,000-activation run passes.)
  launch kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --cert-dir "$DIR/certs/kube-apiserver" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$DIR/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC --endpoint-reconciler-type none --allow-privileged=true \
    --audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$DIR/audit.log" --audit-log-format json \
    --audit-log-maxsize 1048576 --profiling=false

  WHAT_FOR="GET $APISERVER_URL/readyz = ok"
  wait_up kube-apiserver 90 bash -c "[ \"\$(curl -s --max-time 2 --cacert '$pki/ca.crt' --cert '$pki/admin.crt' --key '$pki/admin.key' $APISERVER_URL/readyz)\" = ok ]" || return 1
  mark kube-apiserver

  # --node-monitor-grace-period 1h: kwok renews the fake Node's lease from this same machine. When the machine is
  # saturated (10,000 Jobs on 2 cores) a renewal can come later than the default 50 s; the node-lifecycle
  # controller then taints the Node unreachable and evicts every pod on it, and the Jobs start their pods again.
  launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$DIR/kubeconfigs/kube-controller-manager" \
    --authentication-kubeconfig "$DIR/kubeconfigs/kube-controller-manager" \
    --authorization-kubeconfig "$DIR/kubeconfigs/kube-controller-manager" \
    --authentication-skip-lookup \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$DIR/certs/kube-controller-manager" \
    --leader-elect=false --controllers '*' \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --kube-api-qps 500 --kube-api-burst 1000 --concurrent-job-syncs 20 --profiling=false \
    --node-monitor-grace-period 1h
  launch kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$DIR/kubeconfigs/kube-scheduler" \
    --authentication-kubeconfig "$DIR/kubeconfigs/kube-scheduler" \
    --authorization-kubeconfig "$DIR/kubeconfigs/kube-scheduler" \
    --authentication-skip-lookup \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --cert-dir "$DIR/certs/kube-scheduler" \
    --leader-elect=false --kube-api-qps 500 --kube-api-burst 1000 --profiling=false
  cp "$HERE/kwok-stages.yaml" "$DIR/kwok-stages.yaml"
  launch kwok env KWOK_WORKDIR="$DIR/kwok" "$BIN/kwok" \
    --kubeconfig "$DIR/kubeconfigs/kwok" --config "$DIR/kwok-stages.yaml" \
    --manage-all-nodes=true --cidr 10.244.0.1/24 --node-ip 127.0.0.1

  "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" create -f "$HERE/node.yaml" >/dev/null 2>"$DIR/logs/node.log" || {
    cat "$DIR/logs/node.log" >&2; say "FAILED: could not create the fake Node; see $DIR/logs/node.log"; return 1; }

  WHAT_FOR="GET https://127.0.0.1:$KCM_PORT/healthz = ok"
  wait_up kube-controller-manager 60 bash -c "[ \"\$(curl -sk --max-time 2 https://127.0.0.1:$KCM_PORT/healthz)\" = ok ]" || return 1
  mark kube-controller-manager
  WHAT_FOR="GET https://127.0.0.1:$SCHEDULER_PORT/healthz = ok"
  wait_up kube-scheduler 60 bash -c "[ \"\$(curl -sk --max-time 2 https://127.0.0.1:$SCHEDULER_PORT/healthz)\" = ok ]" || return 1
  mark kube-scheduler
  WHAT_FOR="Node $NODE Ready and untainted"
  wait_up kwok 60 node_ready || { say "    Node $NODE: $(node_state) (kube-controller-manager removes the not-ready taint: $DIR/logs/kube-controller-manager.log)"; return 1; }
  mark node
  # Pods need the namespace's default ServiceAccount: wait for the controller that makes them.
  WHAT_FOR="ServiceAccount default/default created by the serviceaccount controller"
  wait_up kube-controller-manager 30 "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" get serviceaccount default -n default || return 1
}

# Interrupted while starting: stop what was started (the logs stay).
trap 'say "interrupted: stopping what was started (logs stay in $DIR/logs)"; stop_recorded "$DIR"; clean_state "$DIR" 1; exit 130' INT TERM HUP
attempt=1
until start_bed; do
  stop_recorded "$DIR"
  if [ "$PORT_CONFLICT" = 1 ] && [ $attempt -lt 3 ]; then
    say "a port was taken while starting; trying again with other ports"
    PORT_CONFLICT=0; attempt=$((attempt + 1))
    clean_state "$DIR"
    continue
  fi
  clean_state "$DIR" 1
  exit 1
done

trap - INT TERM HUP
cat > "$DIR/env" <<EOF
export KUBECONFIG=$DIR/kubeconfig
export PATH=$BIN:\$PATH
EOF
rss=0
while read -r name pid start; do
  r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0); rss=$((rss + r))
done < "$DIR/pids"
date -u +%Y-%m-%dT%H:%M:%SZ > "$DIR/started"
say "ready: $MILESTONES (seconds since start)"
print_env "started in $(elapsed); $((rss / 1024)) MiB RSS; apiserver $APISERVER_URL"
