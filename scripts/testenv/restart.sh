#!/usr/bin/env bash
# Restarts one component of a running test bed with the very command line it was started with (same ports, same
# PKI, same etcd data), for fault tests: what a crash and a supervisor's restart look like to a client.
#
#   scripts/testenv/restart.sh DIR COMPONENT [DOWN_SECONDS]
#
# COMPONENT: etcd, kube-apiserver, kube-controller-manager or kube-scheduler (kwok's environment is not kept).
# The process recorded in DIR/pids gets TERM (KILL after 10 s); after DOWN_SECONDS (default 0) it is started
# again, its log appended to DIR/logs/COMPONENT.log, DIR/pids updated; the script returns once the component is
# healthy again (etcd: /health; kube-apiserver: /readyz) or fails after 90 s.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DIR=${1:?usage: restart.sh DIR COMPONENT [DOWN_SECONDS]}
COMPONENT=${2:?usage: restart.sh DIR COMPONENT [DOWN_SECONDS]}
DOWN=${3:-0}
DIR=$(cd "$DIR" && pwd -P)
case "$COMPONENT" in etcd|kube-apiserver|kube-controller-manager|kube-scheduler) ;; *) say "cannot restart $COMPONENT"; exit 2 ;; esac
[ -f "$DIR/pids" ] || { say "no bed in $DIR (no pids file)"; exit 1; }

# Same lock as up.sh/down.sh: no start or stop of this bed runs meanwhile.
exec 9>"$DIR/.up.lock"
flock -w 60 9 || { say "$DIR/.up.lock is held"; exit 1; }

read -r _ PID START < <(awk -v c="$COMPONENT" '$1 == c' "$DIR/pids")
recorded_alive "$START" "$PID" || { say "$COMPONENT (pid $PID) is not running"; exit 1; }
mapfile -d '' ARGV < "/proc/$PID/cmdline"

kill -TERM "$PID"
deadline=$(( $(date +%s) + 10 ))
while recorded_alive "$START" "$PID"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
  sleep 0.1
done
say "$COMPONENT stopped; down for ${DOWN}s"
sleep "$DOWN"

(
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && { exec {fd}>&-; } 2>/dev/null
  done
  exec setsid "${ARGV[@]}" </dev/null >>"$DIR/logs/$COMPONENT.log" 2>&1
) &
NEW=$!
NEW_START=$(proc_start "$NEW")
awk -v c="$COMPONENT" -v line="$COMPONENT $NEW $NEW_START" '$1 == c { print line; next } { print }' "$DIR/pids" > "$DIR/pids.new"
mv "$DIR/pids.new" "$DIR/pids"

. "$DIR/ports"
healthy() {
  case "$COMPONENT" in
    etcd) curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"' ;;
    kube-apiserver) [ "$(curl -s --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" "$APISERVER_URL/readyz")" = ok ] ;;
    *) recorded_alive "$NEW_START" "$NEW" ;;
  esac
}
deadline=$(( $(date +%s) + 90 ))
until healthy; do
  recorded_alive "$NEW_START" "$NEW" || { tail -n 15 "$DIR/logs/$COMPONENT.log" >&2; say "FAILED: $COMPONENT exited after its restart"; exit 1; }
  [ "$(date +%s)" -lt "$deadline" ] || { say "FAILED: $COMPONENT not healthy 90 s after its restart"; exit 1; }
  sleep 0.2
done
say "$COMPONENT restarted (pid $NEW) and healthy"
