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
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,17p' "$0" >&2; exit 64; }
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
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

python3 - "$URL" "$LOOPS" "$RUNS" "${ROUNDS:-3}" "${SERVER_PID:-}" "$TMP" "${builds[@]}" <<'EOF'
import os, resource, statistics, subprocess, sys, time
url, loops, runs, rounds, server, tmp, *builds = sys.argv[1:]
loops, runs, rounds = int(loops), int(runs), int(rounds)
flock = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True, text=True).stdout.strip()
names = ["flock"] + [f"#{i}" for i in range(len(builds))]
tick = os.sysconf("SC_CLK_TCK")
cores = os.cpu_count()

def argv(name, r):
    if name == "flock":
        return [flock, f"{tmp}/flock.lock", "true"]
    i = int(name[1:])
    d = f"{tmp}/b{i}"
    os.makedirs(d, exist_ok=True)
    return [builds[i], "--backend", url.replace("@TMP@", d), "run", "--key",
            f"f-{i}-{r}", "--", "true"]

def server_cpu():
    """The server's CPU seconds so far, its reaped children's included."""
    if not server:
        return 0.0
    with open(f"/proc/{server}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 (here from field 3 on).
    return sum(int(x) for x in fields[11:15]) / tick

def batch(cmd):
    """Wall ms, client CPU ms and server CPU ms of one batch."""
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

for n in names:
    subprocess.run(argv(n, "w"), stdout=subprocess.DEVNULL, check=True)
got = {n: [] for n in names}
for r in range(rounds):
    k = r % len(names)
    for n in names[k:] + names[:k]:
        got[n].append(batch(argv(n, r)))
med = statistics.median
total = loops * runs
fw = med([w for w, _, _ in got["flock"]])
print(f"{loops} x {runs} runs on one key, {url}, median of {rounds} rounds, {cores} cores")
print("| | wall | client CPU / run | server CPU / run | CPU floor | wall / flock | floor / flock |")
print("|---|---|---|---|---|---|---|")
for n in names:
    what = "flock" if n == "flock" else f"{n} {builds[int(n[1:])]}"
    w = med([x[0] for x in got[n]])
    c = med([x[1] for x in got[n]])
    s = med([x[2] for x in got[n]])
    floor = (c + s) / cores
    print(f"| {what} | {w:.0f} ms | {c / total:.2f} ms | {s / total:.2f} ms | {floor:.0f} ms "
          f"| {w / fw:.2f}x | {floor / fw:.2f}x |")
print(f"load average at the end: {os.getloadavg()[0]:.1f}")
EOF
