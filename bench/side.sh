#!/usr/bin/env bash
# flock(1) and two dlock builds side by side, interleaved: uncontended, each
# run a whole process on its own and the three taking turns (the order
# rotates every round, so a drift in the machine's load falls on all
# alike); then 8 loops x 20 runs on one key, one batch of each per round,
# the order rotating too (bench/contended.sh, which does the same on any
# backend). Prints medians and the ratios to flock per round (the median of
# the per-round ratios), which is what survives a shared machine's load.
# Usage: bench/side.sh OLD NEW     (env: RUNS=150 CRUNS=5)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -eq 2 ]] || { sed -n '2,10p' "$0" >&2; exit 64; }
OLD=$(realpath "$1") NEW=$(realpath "$2")
RUNS=${RUNS:-150} CRUNS=${CRUNS:-5}
. "$here/batch.sh"
need_flock
bench_scratch

python3 - "$OLD" "$NEW" "$RUNS" "$TMP" <<'EOF'
import os, statistics, subprocess, sys, time
old, new, runs, tmp = sys.argv[1:]
runs = int(runs)
cmds = {
    "flock": ["flock", f"{tmp}/flock.lock", "true"],
    "old": [old, "--backend", f"sqlite:{tmp}/old.db", "run", "--key", "b", "--", "true"],
    "new": [new, "--backend", f"sqlite:{tmp}/new.db", "run", "--key", "b", "--", "true"],
}
null = os.open(os.devnull, os.O_RDWR)
flock = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True, text=True).stdout.strip()
cmds["flock"][0] = flock

def once(argv):
    t = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                       (os.POSIX_SPAWN_DUP2, null, 1)])
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv)}: exit {os.waitstatus_to_exitcode(status)}")
    return (time.perf_counter_ns() - t) / 1e6

names = ["flock", "old", "new"]
def rounds(n, f):
    got = {k: [] for k in names}
    for i in range(n):
        order = names[i % 3:] + names[:i % 3]
        for k in order:
            got[k].append(f(cmds[k]))
    return got

for _ in range(10):
    for k in names:
        once(cmds[k])
u = rounds(runs, once)
med = statistics.median
def ratio(got, k):
    return med([x / f for x, f in zip(got[k], got["flock"])])
print(f"OLD {old}\nNEW {new}")
print(f"| | flock | OLD | NEW | OLD/flock | NEW/flock | NEW/OLD |")
print(f"|---|---|---|---|---|---|---|")
for name, got, n in [(f"uncontended, median of {runs}", u, runs)]:
    print(f"| {name} | {med(got['flock']):.2f} ms | {med(got['old']):.2f} ms | {med(got['new']):.2f} ms "
          f"| {ratio(got, 'old'):.2f}x | {ratio(got, 'new'):.2f}x "
          f"| {med([y / x for x, y in zip(got['old'], got['new'])]):.2f} |")
EOF
echo
ROUNDS=$CRUNS "$here/contended.sh" "sqlite:@TMP@/c.db" 8 20 -- "$OLD" "$NEW"
