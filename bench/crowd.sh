#!/usr/bin/env bash
# A crowd on one key: N `dlock run --wait 2m --key K -- sleep HOLD` processes
# started at once against one backend, as the contract's "Riding out the
# backend" asks (200 on stock servers: PostgreSQL max_connections 100,
# MariaDB 151, ZooKeeper maxClientCnxns 60 per address). Prints how many
# exited with each code (every one should be 0), the wall time, and the spread
# of waiting times (from a contender's start to its child's start: min,
# median, max; a fair queue narrows it).
# With SHARED=K, all but every K-th contender take the lock --shared (a crowd
# of readers with a writer among them every K).
# Usage: bench/crowd.sh URL [N] [HOLD]   (env: DLOCK=path SHARED=K)
#   e.g. bench/crowd.sh postgres://postgres@127.0.0.1:5432/dlock 200 0.02
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
URL=${1:?usage: bench/crowd.sh URL [N] [HOLD]}
N=${2:-200} HOLD=${3:-0.02} SHARED=${SHARED:-0}
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
lim=$(ulimit -u)
[[ $lim == unlimited || $lim -gt $((N * 4)) ]] || { echo "ulimit -u $lim: too low for $N" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

key=crowd-$$
t0=$(date +%s%N)
pids=()
for i in $(seq "$N"); do
  mode=()
  [[ $SHARED -gt 0 && $((i % SHARED)) -ne 0 ]] && mode=(--shared)
  ( date +%s%N >"$TMP/$i.spawn"; rc=0
    "$DLOCK" --backend "$URL" run -q --wait 2m "${mode[@]}" --key "$key" -- \
      sh -c "date +%s%N >$TMP/$i.start; sleep $HOLD" \
      2>"$TMP/$i.err" || rc=$?; echo "$rc" >"$TMP/$i.rc" ) &
  pids+=($!)
done
wait "${pids[@]}"
t1=$(date +%s%N)
echo "== $N contenders on one key, each holding ${HOLD}s, against ${URL%%:*}$([[ $SHARED -gt 0 ]] && echo ", all but every ${SHARED}th shared")"
cat "$TMP"/*.rc | sort -n | uniq -c | awk '{printf "exit %s: %s\n", $2, $1}'
echo "wall time: $(( (t1 - t0) / 1000000 )) ms"
for i in $(seq "$N"); do
  [[ -s $TMP/$i.start ]] && echo $(( ($(cat "$TMP/$i.start") - $(cat "$TMP/$i.spawn")) / 1000000 ))
done | sort -n | awk '{ w[NR] = $1 } END { if (NR) printf "wait ms: min %d, median %d, max %d (max/median %.1f)\n", w[1], w[int((NR + 1) / 2)], w[NR], w[NR] / (w[int((NR + 1) / 2)] > 0 ? w[int((NR + 1) / 2)] : 1) }'
# Non-zero exit codes (grep -c prints 0, and fails, when there are none; under
# pipefail and set -e that failure must not end the script).
bad=$(cat "$TMP"/*.rc | grep -cvx 0 || true)
if [[ $bad -gt 0 ]]; then
  echo "first errors:"; cat "$TMP"/*.err | sort | uniq -c | sort -rn | head -5
  exit 1
fi
