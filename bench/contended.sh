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
#   env: ROUNDS=5, KEY=k (a fresh key per build and round is k-BUILD-ROUND),
#   FLOOR=1 (the CPU each batch cost and the floor it sets: bench/floor.sh),
#   SERVER_PID (with FLOOR=1: the server's main process, its CPU counted)
#   e.g. bench/contended.sh "$DLOCK_BENCH_REDIS" 8 20 -- /work/bin-base/dlock target/release/dlock
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/batch.sh"
batch_setup 2,13p "$@"
[[ ${#builds[@]} -gt 0 ]] || builds=("$(realpath "${DLOCK:-$here/../target/release/dlock}")")
need_flock

python3 - "$URL" "$LOOPS" "$RUNS" "${ROUNDS:-5}" "${KEY:-k}" "$TMP" "${FLOOR:-}" "${SERVER_PID:-}" \
  "${builds[@]}" <<'EOF'
import os, resource, statistics, subprocess, sys, time
url, loops, runs, rounds, key, tmp, floor, server, *builds = sys.argv[1:]
loops, runs, rounds = int(loops), int(runs), int(rounds)
tick = os.sysconf("SC_CLK_TCK")
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

def server_cpu():
    """The server's CPU seconds so far, its reaped children's included
    (PostgreSQL's backends): utime, stime, cutime, cstime of /proc/PID/stat."""
    if not server:
        return 0.0
    with open(f"/proc/{server}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / tick

def batch(cmd):
    """LOOPS loops x RUNS runs of cmd on one key, at once: wall ms, and the
    CPU ms of every process of the batch (getrusage of the reaped tree) and
    of the server."""
    script = f'for i in $(seq {runs}); do "$@" || exit 1; done'
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = server_cpu()
    t = time.perf_counter_ns()
    ps = [subprocess.Popen(["sh", "-c", script, "sh", *cmd], stdout=subprocess.DEVNULL)
          for _ in range(loops)]
    if any(p.wait() != 0 for p in ps):
        sys.exit(f"{' '.join(cmd)}: a contended run failed")
    wall = (time.perf_counter_ns() - t) / 1e6
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3
    return wall, client, (server_cpu() - s0) * 1e3

for n in names:            # warm up: caches, connections, the key's line
    subprocess.run(argv(n, "w"), stdout=subprocess.DEVNULL, check=True)
got = {n: [] for n in names}
for r in range(rounds):
    k = r % len(names)
    for n in names[k:] + names[:k]:
        got[n].append(batch(argv(n, r)))
med = statistics.median
walls = {n: [w for w, _, _ in got[n]] for n in names}
def ratio(a, b):
    return med([x / y for x, y in zip(walls[a], walls[b])])
if floor:
    # On N cores a batch cannot take less than the CPU it cost / N.
    total, cores = loops * runs, os.cpu_count()
    fw = med(walls["flock"])
    print(f"{loops} x {runs} runs on one key, {url}, median of {rounds} rounds, {cores} cores")
    print("| | wall | client CPU / run | server CPU / run | CPU floor | wall / flock | floor / flock |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        what = "flock" if n == "flock" else f"{n} {builds[int(n[1:])]}"
        w = med(walls[n])
        c = med([x[1] for x in got[n]])
        sv = med([x[2] for x in got[n]])
        fl = (c + sv) / cores
        print(f"| {what} | {w:.0f} ms | {c / total:.2f} ms | {sv / total:.2f} ms | {fl:.0f} ms "
              f"| {w / fw:.2f}x | {fl / fw:.2f}x |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    sys.exit(0)
print(f"{loops} x {runs} runs on one key, {url}, median of {rounds} rounds")
print("| | median | each round | /flock | /#0 |")
print("|---|---|---|---|---|")
for n in names:
    what = "flock" if n == "flock" else f"{n} {builds[int(n[1:])]}"
    each = " ".join(f"{x:.0f}" for x in walls[n])
    print(f"| {what} | {med(walls[n]):.0f} ms | {each} | {ratio(n, 'flock'):.2f}x "
          f"| {'' if n == 'flock' else f'{ratio(n, names[1]):.2f}x'} |")
print(f"load average at the end: {os.getloadavg()[0]:.1f}, nproc {os.cpu_count()}")
EOF
