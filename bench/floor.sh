#!/usr/bin/env bash
# What bounds a contended batch: LOOPS loops x RUNS runs on one key (as
# bench/contended.sh), for flock(1) and each dlock build, with the CPU time
# the batch cost. Client CPU is every process of the batch (the loops' shells,
# dlock or flock, their children: getrusage of the reaped tree); server CPU is
# what SERVER_PID (and the children it reaped, PostgreSQL's backends) used in
# the same span, from /proc. On N cores a batch cannot take less than
# (client + server CPU) / N: that is the "CPU floor" printed, per build and as
# a ratio to flock's wall time. A build whose wall time is near its floor is
# bound by CPU per run, and only less CPU per run moves it.
# Usage: bench/floor.sh URL [LOOPS] [RUNS] [-- DLOCK...]
#   URL: the backend (@TMP@ as in bench/contended.sh)
#   env: ROUNDS=3, SERVER_PID (the server's main process, e.g. from
#   bench/servers.sh's DIR/pids)
#   e.g. SERVER_PID=$(awk '$1=="redis"{print $2}' DIR/pids) \
#        bench/floor.sh "$DLOCK_BENCH_REDIS" 8 20 -- target/release/dlock
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,16p' "$0" >&2; exit 64; }
FLOOR=1 ROUNDS=${ROUNDS:-3} exec "$(cd "$(dirname "$0")" && pwd)/contended.sh" "$@"
