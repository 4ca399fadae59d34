#!/usr/bin/env bash
# Failover under faults, for `dlock elect`: three candidates on one key; each
# round stops the leader's dlock, by SIGTERM (graceful) and SIGKILL (crash)
# in turn, reports the time without a leader (from the fault to the next
# body's start), and starts the stopped candidate again as a standby.
#
#   bench/failover.sh URL [TTL] [ROUNDS]     e.g. bench/failover.sh redis://127.0.0.1:6379 2s 6
#
# Uses target/release/dlock if built, else target/debug/dlock ($DLOCK overrides).
set -euo pipefail
url=${1:?usage: bench/failover.sh URL [TTL] [ROUNDS]}
ttl=${2:-2s}
rounds=${3:-6}
d=${DLOCK:-target/release/dlock}
[ -x "$d" ] || d=target/debug/dlock
dir=$(mktemp -d)
key=failover-$$
cleanup() {
  for f in "$dir"/*.pid; do [ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
  for f in "$dir"/*.pid; do [ -e "$f" ] && gone "$(cat "$f")"; done
  rm -rf "$dir"
}
trap cleanup EXIT
now() { date +%s.%N; }
start() { # in a subshell: not a job of this shell, so no "Killed" notices
  (
    "$d" -b "$url" elect --ttl "$ttl" --key "$key" -- sh -c \
      "echo \"\$(date +%s.%N) $1 \$DLOCK_TOKEN\" >> $dir/starts; trap 'exit 0' TERM; while :; do sleep 0.02; done" \
      2>>"$dir/err" &
    echo $! >"$dir/$1.pid"
  )
}
gone() { # wait until process $1 has exited
  while kill -0 "$1" 2>/dev/null; do sleep 0.01; done
}
count() { if [ -f "$dir/starts" ]; then wc -l <"$dir/starts"; else echo 0; fi; }
wait_more() { # wait until more than $1 starts, at most 60 s
  local until=$((SECONDS + 60))
  while [ "$(count)" -le "$1" ]; do
    if [ $SECONDS -ge $until ]; then echo "no leader within 60 s; see $dir/err" >&2; exit 1; fi
    sleep 0.005
  done
}
for i in 1 2 3; do start $i; done
wait_more 0
printf 'round\tfault\tno leader for\tnew term\n'
for r in $(seq 1 "$rounds"); do
  n=$(count)
  leader=$(tail -1 "$dir/starts" | cut -d' ' -f2)
  if ((r % 2)); then sig=TERM; else sig=KILL; fi
  t0=$(now)
  kill -"$sig" "$(cat "$dir/$leader.pid")"
  wait_more "$n"
  read -r t1 _ token < <(tail -1 "$dir/starts")
  printf '%s\tSIG%s\t%s s\t%s\n' "$r" "$sig" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "$token"
  gone "$(cat "$dir/$leader.pid")"
  start "$leader"
  sleep 0.5
done
