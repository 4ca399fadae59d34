#!/usr/bin/env bash
# Contended hand-offs on one key: LOOPS shell loops at once, each RUNS
# `dlock run --key k -- true` in turn, timed as one batch (wall ms), for
# flock(1) and each dlock build given, one batch of each per round, the
# order rotating every round (a drift in a shared machine's load falls on
# all alike). Prints per build the median batch, its median per-round ratio
# to flock (what survives the load) and to the first build.
# Usage: bench/contended.sh URL [LOOPS] [RUNS] [-- DLOCK...]
#   URL: the backend; @TMP@ in it is a fresh directory per build (so
#   `sqlite:@TMP@/c.db` gives each build its own database).
#   DLOCK...: the builds to compare (default: $DLOCK, or target/release/dlock).
#   env: ROUNDS=5, KEY=k (a fresh key per build and round is k-BUILD-ROUND)
#   e.g. bench/contended.sh "$DLOCK_BENCH_REDIS" 8 20 -- /work/bin-base/dlock target/release/dlock
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,13p' "$0" >&2; exit 64; }
URL=$1; shift
LOOPS=8 RUNS=20
if [[ $# -gt 0 && $1 != -- ]]; then LOOPS=$1; shift; fi
if [[ $# -gt 0 && $1 != -- ]]; then RUNS=$1; shift; fi
[[ ${1:-} == -- ]] && shift
builds=()
for b in "$@"; do builds+=("$(realpath "$b")"); done
[[ ${#builds[@]} -gt 0 ]] || builds=("$(realpath "${DLOCK:-$here/../target/release/dlock}")")
command -v flock >/dev/null || { echo "flock(1) is missing (Debian: util-linux)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The user's settings (DLOCK_BACKEND, a config file) must not reach the runs.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

python3 - "$URL" "$LOOPS" "$RUNS" "${ROUNDS:-5}" "${KEY:-k}" "$TMP" "${builds[@]}" <<'EOF'
import os, statistics, subprocess, sys, time
url, loops, runs, rounds, key, tmp, *builds = sys.argv[1:]
loops, runs, rounds = int(loops), int(runs), int(rounds)
flock = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True, text=True).stdout.strip()
names = ["flock"] + [f"#{i}" for i in range(len(builds))]

def argv(name, r):
    if name == "flock":
        return [flock, f"{tmp}/flock.lock", "true"]
    i = int(name[1:])
    d = f"{tmp}/b{i}"
    os.makedirs(d, exist_ok=True)
    # A fresh key per build and round: nothing left over from the last batch.
    return [builds[i], "--backend", url.replace("@TMP@", d), "run", "--key",
            f"{key}-{i}-{r}", "--", "true"]

def batch(cmd):
    """LOOPS loops x RUNS runs of cmd on one key, at once; wall ms."""
    script = f'for i in $(seq {runs}); do "$@" || exit 1; done'
    t = time.perf_counter_ns()
    ps = [subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=subprocess.DEVNULL)
          for _ in range(loops)]
    if any(p.wait() != 0 for p in ps):
        sys.exit(f"{' '.join(cmd)}: a contended run failed")
    return (time.perf_counter_ns() - t) / 1e6

for n in names:            # warm up: caches, connections, the key's line
    subprocess.run(argv(n, "w"), stdout=subprocess.DEVNULL, check=True)
got = {n: [] for n in names}
for r in range(rounds):
    k = r % len(names)
    for n in names[k:] + names[:k]:
        got[n].append(batch(argv(n, r)))
med = statistics.median
def ratio(a, b):
    return med([x / y for x, y in zip(got[a], got[b])])
print(f"{loops} x {runs} runs on one key, {url}, median of {rounds} rounds")
print("| | median | each round | /flock | /#0 |")
print("|---|---|---|---|---|")
for n in names:
    what = "flock" if n == "flock" else f"{n} {builds[int(n[1:])]}"
    each = " ".join(f"{x:.0f}" for x in got[n])
    print(f"| {what} | {med(got[n]):.0f} ms | {each} | {ratio(n, 'flock'):.2f}x "
          f"| {'' if n == 'flock' else f'{ratio(n, names[1]):.2f}x'} |")
print(f"load average at the end: {os.getloadavg()[0]:.1f}, nproc {os.cpu_count()}")
EOF
