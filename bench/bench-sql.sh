#!/usr/bin/env bash
# Whole-process comparison of `dlock run` on PostgreSQL and MariaDB against what
# people write by hand today (one psql / mariadb session holding an advisory
# lock around the command) and flock(1). Starts its own servers on free ports.
# Usage: bench/bench-sql.sh        (env: DLOCK=path RUNS=100 CRUNS=3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-100}
CRUNS=${CRUNS:-3}

# --- tools -------------------------------------------------------------------
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
DLOCK=$(realpath "$DLOCK")
for t in hyperfine mariadb mariadb-install-db flock python3 setpriv; do   # Debian: hyperfine,
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }      # mariadb-server, util-linux
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $PGBIN/postgres ]] || { echo "no /usr/lib/postgresql/*/bin: install 'postgresql'" >&2; exit 1; }
# The real psql, not Debian's Perl pg_wrapper (/usr/bin/psql): ~20 ms of Perl
# start-up would make the hand-written script look slower than it has to be.
PSQL=$PGBIN/psql

# --- isolation: fresh dir, no DLOCK_* settings, no user/system config file --------
# In /tmp (short Unix socket paths), traversable by the postgres OS user.
TMP=$(mktemp -d /tmp/dlock-bench-sql.XXXXXX); chmod 711 "$TMP"
pids=() sigs=()
cleanup() {   # stop our servers (clean shutdown, SIGKILL after 10 s), reap them, drop the dir
  local i p
  for i in "${!pids[@]}"; do kill -"${sigs[i]}" "${pids[i]}" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
unset PGOPTIONS PGSERVICE PGPASSWORD PGDATABASE PGUSER
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

# Two free loopback ports; both sockets open at once so they differ.
read -r P M < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]; [s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
ready() {   # ready NAME LOG CMD...: poll CMD for 10 s; fail early if the server died
  for _ in $(seq 100); do
    "${@:3}" >/dev/null 2>&1 && return
    kill -0 "${pids[-1]}" 2>/dev/null || break; sleep 0.1
  done
  echo "$1 did not start; $2:" >&2; tail -20 "$2" >&2; exit 1
}

# --- PostgreSQL: initdb and postgres refuse root, so they run as the postgres user ---
mkdir "$TMP/pg" "$TMP/my"
as_pg=() as_root=()   # setpriv execs (unlike su/runuser): $! is postgres itself
[[ $(id -u) -eq 0 ]] && { chown postgres: "$TMP/pg"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); as_root=(--user=root); }
"${as_pg[@]}" "$PGBIN/initdb" -D "$TMP/pg/data" -A trust -U postgres --no-sync --no-instructions \
  -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$PGBIN/postgres" -D "$TMP/pg/data" -p "$P" -k "$TMP/pg" \
  -c listen_addresses=127.0.0.1 -c fsync=off </dev/null >/dev/null 2>"$TMP/pg/postgres.log" &
pids+=($!) sigs+=(INT)   # INT: PostgreSQL's fast shutdown
# The port opens before recovery ends: wait for a real query.
ready postgres "$TMP/pg/postgres.log" "$PSQL" -X -h 127.0.0.1 -p "$P" -U postgres -d postgres -c 'select 1'
"$PSQL" -X -h 127.0.0.1 -p "$P" -U postgres -d postgres -q -c 'create database dlock'

# --- MariaDB: as tests/common/servers_sql.rs does (own tmpdir, user made at install) ---
tuning=(--skip-name-resolve --innodb-log-file-size=8M --innodb-buffer-pool-size=16M
  --innodb-temp-data-file-path=ibtmp1:1M:autoextend --innodb-flush-log-at-trx-commit=2
  --innodb-use-native-aio=0)
# The bootstrap runs with --skip-grant-tables: FLUSH PRIVILEGES lets CREATE USER work.
cat >"$TMP/my/init.sql" <<'EOF'
FLUSH PRIVILEGES;
CREATE DATABASE dlock;
CREATE USER 'dlock'@'127.0.0.1' IDENTIFIED BY 'dlock';
GRANT ALL ON dlock.* TO 'dlock'@'127.0.0.1';
EOF
(cd "$TMP/my" && mariadb-install-db --no-defaults --datadir="$TMP/my/data" \
  --auth-root-authentication-method=normal --skip-test-db --extra-file="$TMP/my/init.sql" \
  --tmpdir="$TMP/my" "${tuning[@]}" "${as_root[@]}") >"$TMP/install-db.log" 2>&1 \
  || { cat "$TMP/install-db.log" >&2; exit 1; }
(cd "$TMP/my" && exec /usr/sbin/mariadbd --no-defaults --datadir="$TMP/my/data" \
  --socket="$TMP/my/s.sock" --pid-file="$TMP/my/mariadbd.pid" --log-error="$TMP/my/error.log" \
  --tmpdir="$TMP/my" --port="$M" --bind-address=127.0.0.1 --skip-log-bin \
  "${tuning[@]}" "${as_root[@]}" </dev/null >/dev/null 2>&1) &
pids+=($!) sigs+=(TERM)
# As the dlock user over TCP: proves the grant too.
ready mariadbd "$TMP/my/error.log" mariadb --no-defaults -h127.0.0.1 -P "$M" -udlock -pdlock dlock -e 'select 1'

DP="$DLOCK --backend postgres://postgres@127.0.0.1:$P/dlock"   # word-split on purpose
DM="$DLOCK --backend mysql://dlock:dlock@127.0.0.1:$M/dlock"
FL="flock $TMP/f.lock"
for d in "$DP" "$DM"; do   # a clear message if this dlock build lacks the backend
  $d ping >/dev/null || { echo "'$d ping' failed: is $DLOCK built with SQL backends?" >&2; exit 1; }
done

# --- hand-written contenders: ONE session holds the lock while the client's \! runs CMD ---
# (a lock taken by `psql -c` would die with that session before CMD starts). \! runs its
# line with sh -c, so CMD's words are single-quoted into LOCK_CMD; CMD gets the script's
# stdin/stderr back (fds 5, 6), and its status comes back to the script on fd 3.
# /bin/sh, not bash: the cheapest shell, so the comparison does not favour dlock.
cat >"$TMP/quote.sh" <<'EOF'
LOCK_CMD=
for a; do
  case $a in *\'*) a=$(printf %s "$a" | sed "s/'/'\\\\''/g") ;; esac
  LOCK_CMD="$LOCK_CMD '$a'"
done
export LOCK_CMD
exec 4>&1 5>&2 6<&0
EOF
cat >"$TMP/psql-lock.sh" <<'EOF'
#!/bin/sh
# psql-lock.sh CMD...: CMD's status; 75 if the lock is held elsewhere
set -u
. @TMP@/quote.sh
rc=$(@PSQL@ -X -h 127.0.0.1 -p @P@ -U postgres -d dlock -qAt -v ON_ERROR_STOP=1 3>&1 1>&4 4>&- <<'SQL'
select pg_try_advisory_lock(hashtext('b')) as got \gset
\if :got
\! eval "$LOCK_CMD" <&6 3>&- 5>&- 6<&-; echo $? >&3
select pg_advisory_unlock(hashtext('b')) as released \gset
\else
\! echo 75 >&3
\endif
SQL
) || exit   # psql failed (connection, SQL error): its own status
exit "$rc"
EOF
# The mariadb client has no \if: a busy lock raises an error, which ends a batch
# session before \!; the client prints it on stderr, captured (fd 3) to tell it apart.
# Its \! line ends at the first ';' (the rest is SQL), hence && and ||.
cat >"$TMP/mariadb-lock.sh" <<'EOF'
#!/bin/sh
# mariadb-lock.sh CMD...: CMD's status; 75 if the lock is held elsewhere
set -u
. @TMP@/quote.sh
out=$(mariadb --no-defaults -h127.0.0.1 -P @M@ -udlock -pdlock dlock 3>&1 2>&1 1>&4 4>&- <<'SQL'
delimiter //
IF GET_LOCK('b', 0) IS NOT TRUE THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'lock busy'; END IF //
delimiter ;
\! eval "$LOCK_CMD" <&6 2>&5 3>&- 5>&- 6<&- && echo rc=0 >&3 || echo "rc=$?" >&3
DO RELEASE_LOCK('b');
SQL
); st=$?
case $out in
  *rc=[0-9]*) [ $st = 0 ] || { printf '%s\n' "${out%rc=*}" >&2; exit $st; }; exit "${out##*rc=}" ;;
  *": lock busy"*) exit 75 ;;
  *) printf '%s\n' "$out" >&2; exit $((st ? st : 1)) ;;
esac
EOF
sed -i "s|@TMP@|$TMP|; s|@PSQL@|$PSQL|; s|@P@|$P|; s|@M@|$M|" "$TMP/psql-lock.sh" "$TMP/mariadb-lock.sh"
chmod +x "$TMP/psql-lock.sh" "$TMP/mariadb-lock.sh"
PS=$TMP/psql-lock.sh MS=$TMP/mariadb-lock.sh

# --- sanity: while each contender runs CMD, a no-wait second attempt is refused (75,
# passed back as CMD's status); afterwards the lock is free (0) --------------------
check() {   # check "OUTER" "INNER" (word-split on purpose: no spaces in paths)
  local rc=0
  $1 $2 true || rc=$?
  [[ $rc == 75 ]] || { echo "sanity: '$1' did not hold the lock (inner: $rc)" >&2; exit 1; }
  $1 true || { echo "sanity: '$1' after release: $?" >&2; exit 1; }
}
check "$DP run -q --key b --" "$DP run -q -n --key b --"
check "$PS" "$PS"
check "$DM run -q --key b --" "$DM run -q -n --key b --"
check "$MS" "$MS"
check "$FL" "flock -n -E 75 $TMP/f.lock"
# and CMD's words and status pass through the hand-written scripts intact
for s in "$PS" "$MS"; do
  rc=0; "$s" sh -c 'test "$1" = "it'"'"'s a b" && exit 7' sh "it's a b" || rc=$?
  [[ $rc == 7 ]] || { echo "sanity: $s passed back $rc, not 7" >&2; exit 1; }
done

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n dlock-pg "$DP run --key b -- true" \
  -n dlock-pg-shared "$DP run --shared --key b -- true" \
  -n psql-script "$PS true" \
  -n dlock-mariadb "$DM run --key b -- true" \
  -n dlock-mariadb-shared "$DM run --shared --key b -- true" \
  -n mariadb-script "$MS true" \
  -n flock "$FL true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
# A generated script (run with -N) so hyperfine times the whole batch; each loop's
# exit status is checked, so a failed lock attempt fails the benchmark. dlock waits.
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
pids=()
for j in $(seq 8); do ( for i in $(seq 20); do "$@" || exit; done ) & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n dlock-pg "$TMP/contend.sh $DP run --key b -- true" \
  -n dlock-mariadb "$TMP/contend.sh $DM run --key b -- true" \
  -n flock "$TMP/contend.sh $FL true"

# --- summary ----------------------------------------------------------------------
python3 - "$TMP/unc.json" "$TMP/con.json" <<'EOF' >"$TMP/table.md"
import json, sys
res = lambda p: {r["command"]: r for r in json.load(open(p))["results"]}
fmt = lambda s: "n/a" if s is None else f"{s*1e3:.1f} ms" if s < 1 else f"{s:.2f} s"  # σ: null if 1 run
u, c = res(sys.argv[1]), res(sys.argv[2])
print("| scenario | contender | mean ± σ | min |\n|---|---|---|---|")
for scen, d, names in [("uncontended, one `run -- true`", u,
                        ["dlock-pg", "dlock-pg-shared", "psql-script", "dlock-mariadb",
                         "dlock-mariadb-shared", "mariadb-script", "flock"]),
                       ("8 loops x 20 runs, one key", c, ["dlock-pg", "dlock-mariadb", "flock"])]:
    for n in names:
        print(f"| {scen} | {n} | {fmt(d[n]['mean'])} ± {fmt(d[n]['stddev'])} | {fmt(d[n]['min'])} |")
print("\n| ratio (of means) | value |\n|---|---|")
for label, d, a, b in [("dlock-pg / psql script", u, "dlock-pg", "psql-script"),
                       ("dlock-mariadb / mariadb script", u, "dlock-mariadb", "mariadb-script"),
                       ("dlock-pg / flock", u, "dlock-pg", "flock"),
                       ("dlock-mariadb / flock", u, "dlock-mariadb", "flock"),
                       ("dlock-pg: --shared / exclusive (goal <= 1.1x)", u, "dlock-pg-shared", "dlock-pg"),
                       ("dlock-mariadb: --shared / exclusive (goal <= 1.1x)", u, "dlock-mariadb-shared",
                        "dlock-mariadb"),
                       ("contended: dlock-pg / flock (goal <= 3x)", c, "dlock-pg", "flock"),
                       ("contended: dlock-mariadb / flock (goal <= 3x)", c, "dlock-mariadb", "flock")]:
    print(f"| {label} | {d[a]['mean'] / d[b]['mean']:.2f}x |")
EOF
cat <<EOF

## dlock on PostgreSQL and MariaDB vs psql / mariadb scripts and flock(1)

$(cat "$TMP/table.md")

- dlock binary: $DLOCK
- means of hyperfine: $RUNS runs (uncontended, -N, 10 warmup), $CRUNS runs (contended, -N, 1 warmup)
- servers on 127.0.0.1, same machine: PostgreSQL with fsync=off; MariaDB with innodb-flush-log-at-trx-commit=2
- scripts: /bin/sh, one client session holding pg_try_advisory_lock / GET_LOCK(…, 0) while \`\\!\` runs CMD

Machine: nproc $(nproc), kernel $(uname -r), $("$PGBIN/postgres" --version), $(/usr/sbin/mariadbd --version | sed 's/ *$//'), $("$DLOCK" --version), $(hyperfine --version)
EOF
