#!/usr/bin/env bash
# Compare two dlock builds run by run: OLD and NEW alternate (in ABBA order, so
# a drift in the machine's load falls on both alike), each run a whole process
# timed on its own, and the summary is the median of each, the median of the
# per-pair ratios NEW/OLD and how often NEW was the faster of a pair. On a
# busy machine the pairs still see the same load, which is how a regression
# of 0.2 ms shows up where two separate hyperfine runs would not see it.
#
# Usage: bench/ab.sh OLD NEW [-- ARGS...]
#   ARGS: what each build runs (default: `run --key b -- true` on a fresh
#   SQLite database; `--version` for the start-up alone). The string @DB@ in
#   ARGS is the backend URL of that database.
#   env: RUNS=200 (pairs), WARMUP=10
set -euo pipefail

[[ $# -ge 2 ]] || { sed -n '2,14p' "$0" >&2; exit 64; }
OLD=$(realpath "$1") NEW=$(realpath "$2"); shift 2
[[ ${1:-} == -- ]] && shift
for b in "$OLD" "$NEW"; do [[ -x $b ]] || { echo "not executable: $b" >&2; exit 1; }; done
RUNS=${RUNS:-200} WARMUP=${WARMUP:-10}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
if [[ $# -eq 0 ]]; then set -- --backend @DB@ run --key b -- true; fi

python3 - "$OLD" "$NEW" "$RUNS" "$WARMUP" "sqlite:$TMP/locks.db" "$@" <<'EOF'
import os, statistics, sys, time
old, new, runs, warmup, db, *args = sys.argv[1:]
runs, warmup = int(runs), int(warmup)
args = [a.replace("@DB@", db) for a in args]
null = os.open(os.devnull, os.O_RDWR)

def once(binary):
    t = time.perf_counter_ns()
    pid = os.posix_spawn(binary, [binary, *args], os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                       (os.POSIX_SPAWN_DUP2, null, 1)])
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter_ns() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{binary} {' '.join(args)}: exit {os.waitstatus_to_exitcode(status)}")
    return dt / 1e6

for _ in range(warmup):
    once(old), once(new)
a, b = [], []
for i in range(runs):
    # ABBA: each build goes first in half of the pairs.
    if i % 2 == 0:
        a.append(once(old)); b.append(once(new))
    else:
        b.append(once(new)); a.append(once(old))
ratios = sorted(y / x for x, y in zip(a, b))
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
wins = sum(y < x for x, y in zip(a, b))
print(f"args: {' '.join(args)}   ({runs} pairs, ABBA order)")
print(f"OLD {old}: median {statistics.median(a):.3f} ms, mean {statistics.fmean(a):.3f} ms")
print(f"NEW {new}: median {statistics.median(b):.3f} ms, mean {statistics.fmean(b):.3f} ms")
print(f"NEW/OLD per pair: median {q(ratios, .5):.3f} (quartiles {q(ratios, .25):.3f}-{q(ratios, .75):.3f});"
      f" NEW faster in {wins}/{runs} pairs")
EOF
