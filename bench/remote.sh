#!/usr/bin/env bash
# Contended runs where every other contender looks like another machine:
# LOOPS loops of RUNS `dlock run --key K -- true` on one key, each loop in a
# PID namespace of its own (`unshare --pid`, root), so no waiter can watch
# the holder's process exit and every hand-off is the service's own word
# (a watch, a NOTIFY, a keyspace event). Prints the batch's wall time per
# build, builds taking turns for ROUNDS rounds.
# Usage: bench/remote.sh URL [LOOPS] [RUNS] -- DLOCK...     (env: ROUNDS=3)
#   e.g. bench/remote.sh "$DLOCK_BENCH_ETCD" 8 20 -- OLD NEW
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/batch.sh"
batch_setup 2,9p "$@"
[[ ${#builds[@]} -gt 0 ]] || { echo "no dlock build given" >&2; exit 64; }
command -v unshare >/dev/null || { echo "unshare(1) is missing (Debian: util-linux)" >&2; exit 1; }
for round in $(seq "${ROUNDS:-3}"); do
  line="round $round:"
  for b in "${builds[@]}"; do
    key=remote-$round-$RANDOM
    start=$(date +%s%N)
    for _ in $(seq "$LOOPS"); do
      unshare --pid --fork --mount-proc bash -c \
        "for _ in \$(seq $RUNS); do '$b' --backend '$URL' run --key '$key' -- true || echo FAILED >&2; done" &
    done
    wait
    line+=" $(basename "$b") $(( ($(date +%s%N) - start) / 1000000 )) ms;"
  done
  echo "$line"
done
