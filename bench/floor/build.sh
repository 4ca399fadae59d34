#!/usr/bin/env bash
# Build the least lock clients per run (pglock.c: PostgreSQL advisory lock;
# mylock.c: MySQL/MariaDB GET_LOCK), one connection and two bound statements
# around the command each, into DIR: a floor for a process-per-run lock
# client on that server, to run beside dlock in bench/floor.sh (they take
# dlock's argv: --backend URL run --key KEY -- CMD).
# Usage: bench/floor/build.sh DIR
#   e.g. bench/floor/build.sh /tmp/fl
#        SERVER_PID=... bench/floor.sh "$DLOCK_BENCH_POSTGRES" 8 20 -- /tmp/fl/pglock target/release/dlock
#        SERVER_PID=... bench/floor.sh "$DLOCK_BENCH_MARIADB" 8 20 -- /tmp/fl/mylock target/release/dlock
# Needs (Debian): gcc, libpq-dev, libmariadb-dev.
set -euo pipefail
[[ $# -eq 1 ]] || { sed -n '2,11p' "$0" >&2; exit 64; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
cc -O2 -o "$1/pglock" "$here/pglock.c" -I"$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)" -lpq
# shellcheck disable=SC2046
cc -O2 -o "$1/mylock" "$here/mylock.c" $(mariadb_config --cflags --libs)
echo "$1/pglock $1/mylock"
