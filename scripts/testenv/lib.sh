# Shared by up.sh and down.sh (sourced, not run). Knows which files a test bed folder holds and how to stop
# exactly the processes it recorded.

CACHE=${LATCHKEY_CACHE:-$HOME/.cache/latchkey}
BIN="$CACHE/bin"

say() { echo "testenv: $*" >&2; }

# The start time of a process (clock ticks since boot, field 22 of /proc/PID/stat): a pid plus its start time
# names one process, so a recycled pid is never taken for ours.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                       # drop "pid (comm) "; the rest starts at field 3
  set -- $stat
  echo "${20}"
}

# recorded_alive START PID: is the process that was recorded still running?
recorded_alive() { [ -n "$2" ] && [ "$(proc_start "$2" 2>/dev/null)" = "$1" ]; }

# Stops the processes recorded in DIR/pids: TERM, then KILL after a bound. Only those whose start time matches.
stop_recorded() {
  local dir=$1 name pid start pids=()
  [ -f "$dir/pids" ] || return 0
  while read -r name pid start; do
    [ -n "${pid:-}" ] || continue
    if recorded_alive "$start" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid:$start")
    fi
  done < "$dir/pids"
  local deadline=$(( $(date +%s) + ${LATCHKEY_TESTENV_STOP_TIMEOUT:-10} )) left
  while :; do
    left=()
    for p in ${pids[@]+"${pids[@]}"}; do recorded_alive "${p#*:}" "${p%%:*}" && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for p in "${left[@]}"; do
        recorded_alive "${p#*:}" "${p%%:*}" && kill -KILL "${p%%:*}" 2>/dev/null || true
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  rm -f "$dir/pids"
}

# Removes what up.sh wrote into DIR (and etcd's data in /dev/shm); with keep_logs=1 the logs stay for reading.
clean_state() {
  local dir=$1 keep_logs=${2:-0} data
  if [ -f "$dir/etcd-data-dir" ]; then
    data=$(cat "$dir/etcd-data-dir")
    case "$data" in /dev/shm/latchkey-testenv.*|"$dir"/etcd-data) rm -rf "$data" ;; esac
  fi
  rm -rf "$dir/pki" "$dir/kubeconfigs" "$dir/certs" "$dir/kwok" "$dir/etcd-data"
  rm -f "$dir/kubeconfig" "$dir/env" "$dir/ports" "$dir/pids" "$dir/tokens.csv" "$dir/admin-token" \
    "$dir/unprivileged-token" "$dir/operator-token" "$dir/operator.kubeconfig" "$dir/unprivileged.kubeconfig" \
    "$dir/audit.log" "$dir/audit-policy.yaml" "$dir/kwok-stages.yaml" "$dir/node.yaml" "$dir/etcd-data-dir" \
    "$dir/started"
  rm -f "$dir"/audit-*.log
  [ "$keep_logs" = 1 ] || rm -rf "$dir/logs"
}
