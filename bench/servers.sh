#!/usr/bin/env bash
# Every server dlock supports, on free loopback ports in one directory, each with its
# STOCK limits: PostgreSQL max_connections 100, MariaDB max_connections 151, ZooKeeper
# maxClientCnxns 60 per address (Debian's zoo.cfg: tickTime=2000; no TTL nodes, no
# extendedTypesEnabled), Redis and etcd as shipped. Only durability is relaxed, as a
# local benchmark needs: PostgreSQL fsync=off; MariaDB innodb-flush-log-at-trx-commit=2
# (and a small redo log, for a quick install); Redis without RDB/AOF; ZooKeeper
# forceSync=no (etcd 3.4 has no switch: it fsyncs as shipped).
# Non-limits also set: listen on 127.0.0.1 only, ZooKeeper's admin web server off (it
# would take port 8080) and its four-letter words allowed (monitoring only).
#
# Usage:
#   bench/servers.sh start DIR [NAME...]   start them (DIR: new or empty; default: all of
#                                          redis postgres mariadb zk etcd); prints
#                                          `export DLOCK_BENCH_REDIS=redis://...` lines
#                                          (also in DIR/env); pids in DIR/pids. If one
#                                          fails: stops the rest, DIR keeps the logs
#   bench/servers.sh stop DIR              stop them all (clean shutdown, SIGKILL after
#                                          20 s), then remove DIR
#   bench/servers.sh run [NAME...] -- CMD  start them in a temporary directory, run CMD
#                                          with the DLOCK_BENCH_* variables set, stop
#                                          them; CMD's exit status
# e.g.  eval "$(bench/servers.sh start /tmp/srv)"; bench/crowd.sh "$DLOCK_BENCH_ZK" 200; \
#       bench/servers.sh stop /tmp/srv
#       bench/servers.sh run zk postgres -- sh -c 'bench/crowd.sh "$DLOCK_BENCH_ZK"'
# Variables: DLOCK_BENCH_REDIS redis://127.0.0.1:P, DLOCK_BENCH_POSTGRES
# postgres://postgres@127.0.0.1:P/dlock, DLOCK_BENCH_MARIADB
# mysql://dlock:dlock@127.0.0.1:P/dlock, DLOCK_BENCH_ZK zk://127.0.0.1:P,
# DLOCK_BENCH_ETCD etcd://127.0.0.1:P. Needs (Debian): redis-server, postgresql,
# mariadb-server, zookeeper, etcd-server, etcd-client, util-linux, python3.
# PostgreSQL's initdb/postgres refuse root: as root they run as the postgres user.
set -euo pipefail

ALL=(redis postgres mariadb zk etcd)
die() { echo "servers.sh: $*" >&2; exit 1; }
usage() { sed -n '12,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# --- pids file: one line per server, "NAME PID SIGNAL MATCH" (MATCH: a word of its
# /proc/PID/cmdline, so a stop never signals a stranger that reused the pid) ---------
alive() {   # alive PID: running (a zombie, not yet reaped, is not)
  [[ -r /proc/$1/stat ]] && [[ $(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) != Z ]]
}
ours() {    # ours PID MATCH
  alive "$1" && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qwF -- "$2"
}
stop_dir() {   # stop_dir DIR: signal all, then wait for each (SIGKILL after 20 s)
  local dir=$1 name pid sig match np left=()
  [[ -f $dir/pids ]] || return 0
  while read -r name pid sig match; do
    ours "$pid" "$match" || continue
    kill -"$sig" "$pid" 2>/dev/null || true; left+=("$name:$pid")
  done <"$dir/pids"
  for np in "${left[@]}"; do
    name=${np%%:*} pid=${np##*:}
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then echo "servers.sh: $name ($pid) did not stop in 20 s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true   # reap, when it is our child (run form)
  done
  # postgres as the postgres user: its children follow the postmaster; mariadbd's too.
  rm -f "$dir/pids"
}

start_dir() {   # start_dir DIR NAME...: start, wait until each serves, print the exports
  local dir=$1; shift
  local want=" $* " P
  for n in "$@"; do [[ " ${ALL[*]} " == *" $n "* ]] || die "unknown server '$n' (known: ${ALL[*]})"; done
  command -v python3 >/dev/null || die "python3 is missing"
  mkdir -p "$dir"; dir=$(realpath "$dir")
  [[ -z $(ls -A "$dir") ]] || die "$dir is not empty (a running set? bench/servers.sh stop $dir)"
  chmod 711 "$dir"   # the postgres user must reach $dir/pg
  : >"$dir/pids"; : >"$dir/env"
  # On failure, stop what did start (and say where the logs are).
  trap 'if [[ $? -ne 0 ]]; then stop_dir "'"$dir"'"; [[ -n ${RM_ON_FAIL:-} ]] && rm -rf "'"$dir"'"; fi' EXIT
  # Six free loopback ports, all sockets open at once so they differ.
  local -a ports
  read -r -a ports < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(6)]; [s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
  local lastpid
  spawned() { lastpid=$2; echo "$1 $2 $3 $4" >>"$dir/pids"; }
  ready() {   # ready NAME LOG CMD...: poll CMD for 60 s; fail early if the server died
    for _ in $(seq 600); do
      "${@:3}" >/dev/null 2>&1 && return
      alive "$lastpid" || break; sleep 0.1
    done
    echo "servers.sh: $1 did not start; $2:" >&2; tail -20 "$2" >&2; exit 1
  }
  export_url() { echo "export $1=$2" >>"$dir/env"; }   # printed once all are up
  # setsid: each server leads its own session, so a Ctrl-C at the caller's terminal
  # does not reach it; started from a non-interactive script, setsid execs (no fork)
  # and $! is the server itself.

  # --- Redis: as shipped, minus persistence ------------------------------------------
  if [[ $want == *" redis "* ]]; then
    command -v redis-server >/dev/null || die "redis-server is missing (Debian: redis-server)"
    P=${ports[0]}; mkdir "$dir/redis"
    setsid redis-server --port "$P" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$dir/redis" --logfile "$dir/redis/redis.log" </dev/null >/dev/null 2>&1 &
    spawned redis $! TERM "$P"   # redis rewrites its argv to "redis-server ADDR:PORT"
    ready redis "$dir/redis/redis.log" sh -c "[ \"\$(redis-cli -p $P ping)\" = PONG ]"
    export_url DLOCK_BENCH_REDIS "redis://127.0.0.1:$P"
  fi

  # --- PostgreSQL: initdb's defaults (max_connections 100), fsync off ----------------
  if [[ $want == *" postgres "* ]]; then
    local PGBIN; PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -x $PGBIN/postgres ]] || die "no /usr/lib/postgresql/*/bin (Debian: postgresql)"
    local as_pg=()
    mkdir "$dir/pg"
    [[ $(id -u) -eq 0 ]] && { chown postgres: "$dir/pg"; as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); }
    P=${ports[1]}
    "${as_pg[@]}" "$PGBIN/initdb" -D "$dir/pg/data" -A trust -U postgres --no-sync --no-instructions \
      -E UTF8 --locale=C >"$dir/pg/initdb.log" 2>&1 || { cat "$dir/pg/initdb.log" >&2; exit 1; }
    setsid "${as_pg[@]}" "$PGBIN/postgres" -D "$dir/pg/data" -p "$P" -k "$dir/pg" \
      -c listen_addresses=127.0.0.1 -c fsync=off </dev/null >/dev/null 2>"$dir/pg/postgres.log" &
    spawned postgres $! INT "$dir/pg/data"   # INT: PostgreSQL's fast shutdown
    # The port opens before recovery ends: wait for a real query.
    ready postgres "$dir/pg/postgres.log" "$PGBIN/psql" -X -h 127.0.0.1 -p "$P" -U postgres -d postgres -c 'select 1'
    "$PGBIN/psql" -X -h 127.0.0.1 -p "$P" -U postgres -d postgres -q -c 'create database dlock'
    local mc; mc=$("$PGBIN/psql" -X -h 127.0.0.1 -p "$P" -U postgres -d dlock -Atc 'show max_connections')
    [[ $mc == 100 ]] || echo "servers.sh: note: PostgreSQL max_connections is $mc, not 100" >&2
    export_url DLOCK_BENCH_POSTGRES "postgres://postgres@127.0.0.1:$P/dlock"
  fi

  # --- MariaDB: compiled-in defaults (--no-defaults: max_connections 151) --------------
  if [[ $want == *" mariadb "* ]]; then
    command -v mariadb-install-db >/dev/null || die "mariadb-install-db is missing (Debian: mariadb-server)"
    P=${ports[2]}; mkdir "$dir/my"
    local as_root=(); [[ $(id -u) -eq 0 ]] && as_root=(--user=root)
    # Durability and install speed only (as tests/common/servers_sql.rs): no limits.
    local tuning=(--skip-name-resolve --innodb-log-file-size=8M --innodb-flush-log-at-trx-commit=2
      --innodb-temp-data-file-path=ibtmp1:1M:autoextend --innodb-use-native-aio=0)
    # The bootstrap runs with --skip-grant-tables: FLUSH PRIVILEGES lets CREATE USER work.
    cat >"$dir/my/init.sql" <<'EOF'
FLUSH PRIVILEGES;
CREATE DATABASE dlock;
CREATE USER 'dlock'@'127.0.0.1' IDENTIFIED BY 'dlock';
GRANT ALL ON dlock.* TO 'dlock'@'127.0.0.1';
EOF
    (cd "$dir/my" && mariadb-install-db --no-defaults --datadir="$dir/my/data" \
      --auth-root-authentication-method=normal --skip-test-db --extra-file="$dir/my/init.sql" \
      --tmpdir="$dir/my" "${tuning[@]}" "${as_root[@]}") >"$dir/my/install-db.log" 2>&1 \
      || { cat "$dir/my/install-db.log" >&2; exit 1; }
    (cd "$dir/my" && exec setsid /usr/sbin/mariadbd --no-defaults --datadir="$dir/my/data" \
      --socket="$dir/my/s.sock" --pid-file="$dir/my/mariadbd.pid" --log-error="$dir/my/error.log" \
      --tmpdir="$dir/my" --port="$P" --bind-address=127.0.0.1 --skip-log-bin \
      "${tuning[@]}" "${as_root[@]}" </dev/null >/dev/null 2>&1) &
    spawned mariadb $! TERM "--datadir=$dir/my/data"
    # As the dlock user over TCP: proves the grant too.
    local my=(mariadb --no-defaults -h127.0.0.1 -P "$P" -udlock -pdlock dlock)
    ready mariadb "$dir/my/error.log" "${my[@]}" -e 'select 1'
    local mc; mc=$("${my[@]}" -N -e 'select @@max_connections')
    [[ $mc == 151 ]] || echo "servers.sh: note: MariaDB max_connections is $mc, not 151" >&2
    export_url DLOCK_BENCH_MARIADB "mysql://dlock:dlock@127.0.0.1:$P/dlock"
  fi

  # --- ZooKeeper: Debian's zoo.cfg (tickTime=2000), maxClientCnxns left at 60 ---------
  if [[ $want == *" zk "* ]]; then
    local J=/usr/share/java CP
    command -v java >/dev/null && [[ -f $J/zookeeper.jar ]] || die "java or $J/zookeeper.jar is missing (Debian: zookeeper)"
    CP=$J/zookeeper.jar; [[ -f $J/slf4j-simple.jar ]] && CP+=:$J/slf4j-simple.jar   # else no log
    P=${ports[3]}; mkdir -p "$dir/zk/data"
    printf '%s\n' tickTime=2000 initLimit=10 syncLimit=5 "dataDir=$dir/zk/data" "clientPort=$P" \
      clientPortAddress=127.0.0.1 admin.enableServer=false \
      4lw.commands.whitelist=srvr,stat,conf,cons,mntr,wchs,ruok forceSync=no >"$dir/zk/zoo.cfg"
    # The JVM flags only keep a small machine's JVM small; none is a ZooKeeper setting.
    (cd "$dir/zk" && exec setsid java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
      -XX:+ExitOnOutOfMemoryError -Djava.net.preferIPv4Stack=true -Dzookeeper.jmx.log4j.disable=true \
      -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
      -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -cp "$CP" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zk/zoo.cfg") \
      </dev/null >>"$dir/zk/zookeeper.log" 2>&1 &
    spawned zk $! TERM "$dir/zk/zoo.cfg"
    # Serving, and ours (conf names our dataDir: not a stranger on a reused port).
    cat >"$dir/zk/flw.py" <<'EOF'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(sys.argv[2].encode()); out = b""
        while (b := s.recv(65536)): out += b
        print(out.decode(), end="")
except OSError: sys.exit(1)
EOF
    ready zookeeper "$dir/zk/zookeeper.log" sh -c "python3 '$dir/zk/flw.py' $P conf | grep -q '^dataDir=$dir/zk/data'"
    local mc; mc=$(python3 "$dir/zk/flw.py" "$P" conf | sed -n 's/^maxClientCnxns=//p')
    [[ $mc == 60 ]] || echo "servers.sh: note: ZooKeeper maxClientCnxns is $mc, not 60" >&2
    export_url DLOCK_BENCH_ZK "zk://127.0.0.1:$P"
  fi

  # --- etcd: one member, all defaults (heartbeat 100 ms, election 1 s) ---------------
  if [[ $want == *" etcd "* ]]; then
    command -v etcd >/dev/null || die "etcd is missing (Debian: etcd-server)"
    command -v etcdctl >/dev/null || die "etcdctl is missing (Debian: etcd-client)"
    P=${ports[4]}; local Q=${ports[5]}; mkdir "$dir/etcd"
    # ETCD_* in our environment would configure it: not ours to pass on.
    setsid env $(compgen -e | grep -E '^ETCD(CTL)?_' | sed 's/^/-u /' || true) \
      etcd --name n1 --data-dir "$dir/etcd/data" \
      --listen-client-urls "http://127.0.0.1:$P" --advertise-client-urls "http://127.0.0.1:$P" \
      --listen-peer-urls "http://127.0.0.1:$Q" --initial-advertise-peer-urls "http://127.0.0.1:$Q" \
      --initial-cluster "n1=http://127.0.0.1:$Q" --log-level warn \
      </dev/null >/dev/null 2>"$dir/etcd/etcd.log" &
    spawned etcd $! TERM "$dir/etcd/data"
    # The port opens before the member has a leader: wait for a healthy endpoint.
    ready etcd "$dir/etcd/etcd.log" sh -c "ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:$P endpoint health 2>&1 | grep -q 'is healthy'"
    export_url DLOCK_BENCH_ETCD "etcd://127.0.0.1:$P"
  fi
  trap - EXIT
  cat "$dir/env"
}

cmd=${1:-}; shift || true
case $cmd in
  start)
    [[ $# -ge 1 ]] || usage
    d=$1; shift; [[ $# -gt 0 ]] || set -- "${ALL[@]}"
    start_dir "$d" "$@" ;;
  stop)
    [[ $# -eq 1 ]] || usage
    [[ -d $1 ]] || die "no directory $1"
    [[ -f $1/pids ]] || die "$1/pids is missing: not a directory of bench/servers.sh start"
    stop_dir "$1"; rm -rf "$1" ;;
  run)
    names=()
    while [[ $# -gt 0 && $1 != -- ]]; do names+=("$1"); shift; done
    [[ ${1:-} == -- && $# -ge 2 ]] || usage
    shift; [[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")
    # In /tmp: PostgreSQL's Unix socket path must stay short.
    D=$(mktemp -d /tmp/dlock-servers.XXXXXX)
    trap 'exit 130' INT; trap 'exit 143' TERM
    RM_ON_FAIL=1; start_dir "$D" "${names[@]}" >/dev/null   # on failure: stops, removes $D
    trap 'stop_dir "$D"; rm -rf "$D"' EXIT
    set -a; . "$D/env"; set +a
    # CMD in the background and `wait`: a trap runs at once (not when a foreground CMD
    # ends), so a SIGTERM to this script passes to CMD, then stops the servers. CMD
    # keeps our stdin (fd 3: a background job's stdin would be /dev/null) and, in our
    # process group, a Ctrl-C at the terminal.
    exec 3<&0
    ( trap - INT QUIT; exec "$@" <&3 3<&- ) & cpid=$!
    exec 3<&-
    trap 'kill -INT $cpid 2>/dev/null; wait $cpid; exit 130' INT
    trap 'kill -TERM $cpid 2>/dev/null; wait $cpid; exit 143' TERM
    rc=0; wait "$cpid" || rc=$?
    exit "$rc" ;;
  *) usage ;;
esac
