#!/usr/bin/env bash
# Stops exactly the processes that scripts/testenv/up.sh recorded in DIR/pids (TERM, then KILL after 10 s) and
# removes the bed's state, etcd's data in /dev/shm included. Harmless when nothing runs.
#
#   scripts/testenv/down.sh [DIR]      DIR defaults to <repo>/.testenv
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DIR=${1:-${LATCHKEY_TESTENV_DIR:-$REPO/.testenv}}
if [ ! -d "$DIR" ]; then say "nothing to stop in $DIR"; exit 0; fi
DIR=$(cd "$DIR" && pwd -P)

# Wait for an up.sh that is starting this bed, so that nothing it starts afterwards is left behind.
exec 9>"$DIR/.up.lock"
flock -w 300 9 || { say "another up.sh has held $DIR/.up.lock for 5 minutes"; exit 1; }

n=0; [ -f "$DIR/pids" ] && n=$(grep -c . "$DIR/pids" || true)
stop_recorded "$DIR"
clean_state "$DIR"
# The lock files (.up.lock, .bed.lock) stay: removing a lock file someone waits on would let two starts run.
say "stopped ($n processes recorded) and removed the state of $DIR"
