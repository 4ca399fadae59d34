#!/usr/bin/env bash
# Fairness as a new user meets it (issue 23): a holder, then five waiters on
# the same key started 0.3 s apart, each appending its number when it gets
# the lock. Prints the order per round (fair: 1 2 3 4 5 every time).
# Usage: bench/order.sh URL [ROUNDS]     (env: DLOCK=path, default the release build)
# e.g.   eval "$(bench/servers.sh start /tmp/srv)"; bench/order.sh "$DLOCK_BENCH_REDIS" 5
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
URL=${1:?usage: bench/order.sh URL [ROUNDS]}
ROUNDS=${2:-5}
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
export DLOCK_NAMESPACE=order$$
D() { "$DLOCK" --backend "$URL" "$@"; }
held() { D status --json "$1" 2>/dev/null | grep -q '"held": *true'; }

fair=0
for r in $(seq "$ROUNDS"); do
  k=order-$r
  D run --key "$k" -- sh -c "while [ ! -e $TMP/stop$r ]; do sleep 0.02; done" 2>/dev/null &
  h=$!
  for _ in $(seq 400); do held "$k" && break; sleep 0.05; done
  pids=()
  for i in 1 2 3 4 5; do
    D run --wait 1m --key "$k" -- sh -c "echo $i >> $TMP/order$r" 2>/dev/null &
    pids+=($!)
    sleep 0.3
  done
  touch "$TMP/stop$r"
  wait "$h" "${pids[@]}"
  got=$(tr '\n' ' ' < "$TMP/order$r")
  [[ $got == "1 2 3 4 5 " ]] && fair=$((fair + 1))
  echo "round $r: $got"
done
echo "${URL%%:*}: in arrival order $fair of $ROUNDS rounds"
