#!/usr/bin/env bash
# Liveness, measured as a user meets it (issue 20), for one dlock build on one
# backend URL:
#   false-loss  20 holders side by side, each on its own key, each waiting
#               about a third of its 3 s TTL behind a first holder: how many
#               were stopped (exit 74) although nothing failed;
#   dead-holder a `run --ttl 20s` holder SIGKILLed: seconds until the next
#               contender on this machine holds the key;
#   dead-waiter a waiter SIGKILLed while the holder runs: seconds from the
#               holder's exit until the next contender holds the key.
# Usage: bench/liveness.sh URL          (env: DLOCK=path, default the release build)
# e.g.   eval "$(bench/servers.sh start /tmp/srv)"; bench/liveness.sh "$DLOCK_BENCH_ETCD"
# Prints one line: URL false-loss=N/20 dead-holder=S dead-waiter=S
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
URL=${1:?usage: bench/liveness.sh URL}
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
export DLOCK_NAMESPACE=live$$
D() { "$DLOCK" --backend "$URL" "$@"; }
# In the background, its own pid in $! (no shell between it and a SIGKILL).
B() { exec "$DLOCK" --backend "$URL" "$@"; }
now() { date +%s.%N; }
held() { D status --json "$1" 2>/dev/null | grep -q '"held": *true'; }
until_held() { for _ in $(seq 400); do held "$1" && return; sleep 0.05; done; echo "never held: $1" >&2; exit 1; }

# --- false loss: 20 at once, each behind a first holder -----------------------
pids=() seconds=()
for i in $(seq 20); do
  D run --ttl 3s --key "aged$i" -- sh -c "while [ ! -e $TMP/go ]; do sleep 0.02; done" 2>/dev/null &
  pids+=($!)
done
for i in $(seq 20); do until_held "aged$i"; done
for i in $(seq 20); do D run --ttl 3s --key "aged$i" -- sleep 3 2>/dev/null & seconds+=($!); done
sleep 1
touch "$TMP/go"
for p in "${pids[@]}"; do wait "$p" || true; done
lost=0
for p in "${seconds[@]}"; do wait "$p" || { [[ $? == 74 ]] && lost=$((lost + 1)); }; done

# --- a SIGKILLed holder -------------------------------------------------------
(B run --ttl 20s --key deadh -- sleep 60 2>/dev/null) &
h=$!
until_held deadh
kill -KILL "$h"; wait "$h" 2>/dev/null || true
t0=$(now)
D run --wait 60s --key deadh -- true
dead_holder=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')

# --- a SIGKILLed waiter -------------------------------------------------------
D run --ttl 20s --key deadw -- sh -c "while [ ! -e $TMP/go2 ]; do sleep 0.02; done" 2>/dev/null &
h=$!
until_held deadw
(B run --ttl 20s --key deadw -- true 2>/dev/null) &
w=$!
sleep 1                       # the waiter is in line
kill -KILL "$w"; wait "$w" 2>/dev/null || true
touch "$TMP/go2"; wait "$h" || true
t0=$(now)
D run --wait 60s --key deadw -- true
dead_waiter=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')

echo "$URL false-loss=$lost/20 dead-holder=${dead_holder}s dead-waiter=${dead_waiter}s"
