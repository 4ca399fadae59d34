#!/usr/bin/env bash
# One hand-off at a time, on a quiet key: a holder's command sleeps, a
# waiter queues behind it, and the time from the holder's command ending
# to the waiter's command starting is taken from the commands' own clocks
# (`date +%s%N` in each). No other process competes for the two cores, so
# this is the hand-off's latency alone (the release, the wake-up, the
# waiter's acquiring round trips and its command's start), where
# bench/contended.sh measures a crowd, whose CPU shares the machine.
# flock(1) does the same with the same commands, for the floor that the
# commands' own start (sh, date) sets. Builds take turns, round by round.
# Prints per build the median gap, its excess over flock's, and the ratio.
# Usage: bench/handoff.sh URL [ROUNDS] [-- DLOCK...]
#   URL: the backend (sqlite:@TMP@/h.db gives each build its own file).
#   ROUNDS: 30. DLOCK...: default $DLOCK, or target/release/dlock.
#   e.g. bench/handoff.sh "$DLOCK_BENCH_MARIADB" 30 -- /tmp/old/dlock target/release/dlock
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,15p' "$0" >&2; exit 64; }
URL=$1; shift
ROUNDS=30
if [[ $# -gt 0 && $1 != -- ]]; then ROUNDS=$1; shift; fi
[[ ${1:-} == -- ]] && shift
builds=()
for b in "$@"; do builds+=("$(realpath "$b")"); done
[[ ${#builds[@]} -gt 0 ]] || builds=("$(realpath "${DLOCK:-$here/../target/release/dlock}")")
. "$here/batch.sh"
need_flock
bench_scratch

python3 - "$URL" "$ROUNDS" "$TMP" "${builds[@]}" <<'EOF'
import os, statistics, subprocess, sys, time
url, rounds, tmp, *builds = sys.argv[1:]
rounds = int(rounds)
flock = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True, text=True).stdout.strip()
names = ["flock"] + [f"#{i}" for i in range(len(builds))]
end, start = f"{tmp}/end", f"{tmp}/start"
HOLD = f"sleep 0.15; date +%s%N > {end}"
TAKE = f"date +%s%N > {start}"

def argv(name, r, body):
    if name == "flock":
        return [flock, f"{tmp}/flock.lock", "sh", "-c", body]
    i = int(name[1:])
    d = f"{tmp}/b{i}"
    os.makedirs(d, exist_ok=True)
    return [builds[i], "--backend", url.replace("@TMP@", d), "run", "--key",
            f"h-{i}-{r}", "--", "sh", "-c", body]

def gap(name, r):
    """The holder's command ends, the waiter's starts: microseconds."""
    for f in (end, start):
        if os.path.exists(f):
            os.remove(f)
    holder = subprocess.Popen(argv(name, r, HOLD), stdout=subprocess.DEVNULL)
    time.sleep(0.05)
    waiter = subprocess.run(argv(name, r, TAKE), stdout=subprocess.DEVNULL)
    if holder.wait() != 0 or waiter.returncode != 0:
        sys.exit(f"{name}: a run failed")
    with open(end) as e, open(start) as s:
        return (int(s.read()) - int(e.read())) / 1000

gaps = {n: [] for n in names}
for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
        gaps[n].append(gap(n, r))

base = statistics.median(gaps["flock"])
print(f"one hand-off at a time, {url}, median of {rounds} rounds, {os.cpu_count()} cores")
print("| | hand-off | over flock | / flock |")
print("|---|---|---|---|")
for n in names:
    m = statistics.median(gaps[n])
    label = n if n == "flock" else f"{n} {builds[int(n[1:])]}"
    print(f"| {label} | {m / 1000:.2f} ms | {(m - base) / 1000:+.2f} ms | {m / base:.2f}x |")
EOF
