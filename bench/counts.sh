#!/usr/bin/env bash
# Counts that do not depend on the machine's load, for one or more dlock
# builds side by side: per uncontended `run --key b -- true` on SQLite (the
# dlock process, its guard and the child together unless said otherwise):
# system calls, fsyncs, futex calls, threads and processes started, context
# switches and page faults; instructions of the dlock process itself and of
# `dlock --version` (callgrind); dynamic relocations and binary size.
# Usage: bench/counts.sh DLOCK...      (env: RUNS=20)
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,8p' "$0" >&2; exit 64; }
RUNS=${RUNS:-20}
for t in strace perf valgrind readelf; do
  command -v $t >/dev/null || { echo "$t is missing (Debian: strace, linux-perf, valgrind, binutils)" >&2; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

echo "| per run (mean of $RUNS) | $(for b; do printf '%s | ' "$(basename "$b")"; done)"
echo "|---|$(for b; do printf -- '---|'; done)"
declare -A row
for b; do
  b=$(realpath "$b") n=$(basename "$b") db="sqlite:$TMP/$n.db"
  for _ in 1 2 3; do "$b" --backend "$db" run --key b -- true; done   # the file exists, warm
  : >"$TMP/$n.st"
  for _ in $(seq "$RUNS"); do
    strace -f -qq -o "$TMP/one" "$b" --backend "$db" run --key b -- true
    cat "$TMP/one" >>"$TMP/$n.st"
  done
  st=$TMP/$n.st
  per() { awk -v n="$RUNS" -v c="$(grep -cE "$1" "$st" || true)" 'BEGIN { printf "%.1f", c / n }'; }
  row[syscalls]+="$(per '^[0-9]+ +[a-z_0-9]+\(') | "
  row[futex]+="$(per ' futex\(') | "
  row[fsync]+="$(per ' f(data)?sync\(') | "
  row[fcntl]+="$(per ' fcntl\(') | "
  row[clone]+="$(per ' clone3?\(') | "
  ps=$(perf stat -r "$RUNS" -x, -e context-switches,page-faults "$b" --backend "$db" run --key b -- true 2>&1 >/dev/null)
  row[cs]+="$(awk -F, '/context-switches/ {printf "%.0f", $1}' <<<"$ps") | "
  row[pf]+="$(awk -F, '/page-faults/ {printf "%.0f", $1}' <<<"$ps") | "
  ir=$(valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.%p" "$b" --backend "$db" run --key b -- true 2>&1 \
    | awk '/Collected/ {print $4}' | tail -1)   # the last to exit: dlock itself
  row[ir]+="$ir | "
  row[irv]+="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$b" --version 2>&1 | awk '/Collected/ {print $4}') | "
  row[relocs]+="$(readelf -rW "$b" | grep -cE '^[0-9a-f]{8,} ' || true) | "
  row[size]+="$(stat -c %s "$b") | "
done
echo "| system calls | ${row[syscalls]}"
echo "| futex | ${row[futex]}"
echo "| fcntl (SQLite's locks) | ${row[fcntl]}"
echo "| fsync | ${row[fsync]}"
echo "| threads + processes started | ${row[clone]}"
echo "| context switches (perf) | ${row[cs]}"
echo "| page faults (perf) | ${row[pf]}"
echo "| instructions, dlock's process (callgrind, one run) | ${row[ir]}"
echo "| instructions, \`dlock --version\` | ${row[irv]}"
echo "| dynamic relocations | ${row[relocs]}"
echo "| bytes | ${row[size]}"
