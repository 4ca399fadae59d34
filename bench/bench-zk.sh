#!/usr/bin/env bash
# Whole-process comparison of `dlock run` on ZooKeeper against kazoo's Lock (what
# users script today; the same lock: Curator-style nodes under /dlock/b) and flock(1),
# then WAITERS processes queued on one key (no herd?). Starts its own ZooKeeper.
# Usage: bench/bench-zk.sh        (env: DLOCK=path RUNS=50 CRUNS=3 WAITERS=200 HOLD=3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-50} CRUNS=${CRUNS:-3} WAITERS=${WAITERS:-200} HOLD=${HOLD:-3}

# --- tools -------------------------------------------------------------------
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
DLOCK=$(realpath "$DLOCK")
for t in hyperfine java flock python3; do   # Debian: hyperfine, zookeeper (brings java), util-linux
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }; done
J=/usr/share/java   # classpath as tests/common/servers_zk.rs: the jar's manifest brings the rest
[[ -f $J/zookeeper.jar && -f $J/zookeeper-jute.jar ]] || { echo "install the Debian package zookeeper" >&2; exit 1; }
CP=$J/zookeeper.jar; [[ -f $J/slf4j-simple.jar ]] && CP+=:$J/slf4j-simple.jar   # else no log at all
python3 -c 'import kazoo' 2>/dev/null || { echo "python module kazoo is missing: pip install kazoo" >&2; exit 1; }

# --- isolation: fresh dir, no DLOCK_* settings, no user/system config file --------
TMP=$(mktemp -d)
zpid=
cleanup() {   # stop ZooKeeper (SIGTERM, SIGKILL after 10 s), reap it, drop the dir
  if [[ -n $zpid ]]; then kill "$zpid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$zpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$zpid" 2>/dev/null || true; wait "$zpid" 2>/dev/null || true; fi
  rm -rf "$TMP"; }
trap cleanup EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

# --- helpers: four-letter words (no nc here), a kazoo try-lock, a watch monitor ------
cat >"$TMP/zk.py" <<'EOF'
import json, os, socket, sys, time
port = int(os.environ["P"])
def flw(word):   # the whole answer, "" if none within a second
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(word.encode()); out = b""
            while (b := s.recv(65536)): out += b
            return out.decode()
    except OSError: return ""
def mntr(): return dict(l.split("\t", 1) for l in flw("mntr").splitlines() if "\t" in l)
if sys.argv[1] == "flw": print(flw(sys.argv[2]), end="")
elif sys.argv[1] == "trylock":   # can kazoo take /dlock/b within a second?
    from kazoo.client import KazooClient; from kazoo.exceptions import LockTimeout
    zk = KazooClient(hosts=f"127.0.0.1:{port}"); zk.start(); got = False
    lock = zk.Lock("/dlock/b", "kazoo", extra_lock_patterns=["-lock-"])
    try: got = lock.acquire(timeout=1)
    except LockTimeout: pass
    print(got); got and lock.release(); zk.stop(); zk.close()
elif sys.argv[1] == "monitor":   # sample wchs every 50 ms until STOP exists; keep the peak
    stop, out, before, peak = sys.argv[2], sys.argv[3], mntr(), {"watches": 0}
    while not os.path.exists(stop):
        w = flw("wchs").split()   # "N connections watching M paths\nTotal watches:K"
        if len(w) >= 7 and int(w[6].split(":")[1]) > peak["watches"]:
            peak = {"conns": w[0], "paths": w[3], "watches": int(w[6].split(":")[1])}
        time.sleep(0.05)
    after = mntr(); d = lambda k: int(after.get(k, 0)) - int(before.get(k, 0))
    peak.update(packets=d("zk_packets_received"), deleted=d("zk_cnt_node_deleted_watch_count"),
                children=d("zk_cnt_node_children_watch_count"),
                max_deleted=after.get("zk_max_node_deleted_watch_count"))
    json.dump(peak, open(out, "w"))
EOF
zk() { P=$P python3 "$TMP/zk.py" "$@"; }

# --- ZooKeeper: standalone, free loopback port; zoo.cfg and JVM flags as the tests' ---
P=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$TMP/zk/data"
printf '%s\n' tickTime=200 minSessionTimeout=400 maxSessionTimeout=60000 "dataDir=$TMP/zk/data" \
  "clientPort=$P" clientPortAddress=127.0.0.1 admin.enableServer=false '4lw.commands.whitelist=*' \
  forceSync=no preAllocSize=1024 maxClientCnxns=0 >"$TMP/zk/zoo.cfg"
# exec in a subshell: $! is then the JVM itself, which the trap kills.
(cd "$TMP/zk" && exec java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
  -XX:+ExitOnOutOfMemoryError -Djava.net.preferIPv4Stack=true -Dzookeeper.jmx.log4j.disable=true \
  -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
  -Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS -cp "$CP" \
  -Dznode.container.checkIntervalMs=100 -Dzookeeper.extendedTypesEnabled=true \
  -Dzookeeper.fastleader.maxNotificationInterval=1000 \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$TMP/zk/zoo.cfg") \
  </dev/null >>"$TMP/zk/zookeeper.log" 2>&1 & zpid=$!
# Serving, and ours (conf names our dataDir: not a stranger on a reused port).
ready() { [[ $(zk flw ruok) == imok ]] && zk flw srvr | grep -q '^Mode: standalone' \
  && zk flw conf | grep -q "^dataDir=$TMP/zk/data"; }
for _ in $(seq 300); do ready && break; kill -0 "$zpid" 2>/dev/null || break; sleep 0.1; done
ready || { echo "zookeeper did not start; $TMP/zk/zookeeper.log:" >&2; tail -20 "$TMP/zk/zookeeper.log" >&2; exit 1; }

DL="$DLOCK --backend zk://127.0.0.1:$P"   # word-split on purpose (no spaces in it)
FL="flock $TMP/f.lock"
# kazoo's Lock, told to count Curator's "-lock-" nodes (dlock's) as contenders too.
cat >"$TMP/kazoo-lock.py" <<EOF
import subprocess, sys
from kazoo.client import KazooClient
zk = KazooClient(hosts="127.0.0.1:$P"); zk.start()
with zk.Lock("/dlock/b", "kazoo", extra_lock_patterns=["-lock-"]):   # acquire ... release
    rc = subprocess.run(sys.argv[1:]).returncode
zk.stop(); zk.close()
sys.exit(rc)
EOF
KZ="python3 $TMP/kazoo-lock.py"

# --- sanity: each holds one ephemeral under /dlock/b while CMD runs (`dump` lists them),
# none after; and each sees the other's node as a holder: the same lock, a fair race ---
printf '%s\n' '#!/bin/sh' "P=$P python3 $TMP/zk.py flw dump | grep -c /dlock/b/ || true" >"$TMP/held"; chmod +x "$TMP/held"
for c in "$DL run -q --key b --" "$KZ"; do
  n=$($c "$TMP/held")
  [[ $n == 1 && $("$TMP/held") == 0 ]] || { echo "sanity: '$c' held=$n" >&2; exit 1; }
done
rc=$($KZ sh -c "$DL run -q -n --key b -- true; echo \$?")
[[ $rc == 75 ]] || { echo "sanity: dlock -n under kazoo's lock gave $rc, not 75" >&2; exit 1; }
got=$($DL run -q --key b -- env P="$P" python3 "$TMP/zk.py" trylock)
[[ $got == False ]] || { echo "sanity: kazoo took the lock under dlock ($got)" >&2; exit 1; }

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n dlock "$DL run --key b -- true" -n "dlock --shared" "$DL run --shared --key b -- true" \
  -n kazoo "$KZ true" -n flock "$FL true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
# A generated script so hyperfine times the whole batch; each loop's exit status
# is checked, so a failed lock attempt fails the benchmark.
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu; pids=()
for j in $(seq 8); do ( for i in $(seq 20); do "$@" || exit; done ) & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
# One round outside hyperfine (which hides output): CMD takes a second, no-wait flock,
# so two holders at once fail the loop; anything dlock prints is kept.
"$TMP/contend.sh" $DL run --key b -- flock -n -E 99 "$TMP/x.lock" sleep 0.005 >/dev/null 2>"$TMP/con.err" \
  || { echo "sanity: dlock let two hold at once, or failed:" >&2; cat "$TMP/con.err" >&2; exit 1; }
[[ -s $TMP/con.err ]] && { echo "note: dlock under contention printed:" >&2; head -5 "$TMP/con.err" >&2; }
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n dlock "$TMP/contend.sh $DL run --key b -- true" -n flock "$TMP/contend.sh $FL true"

# --- 3. WAITERS queued behind one holder: each should watch only its predecessor;
# a herd shows as many watches on one path, or child watches, fired at each release ---
lim=$(ulimit -u)
[[ $lim == unlimited || $lim -gt $((WAITERS * 4)) ]] || { echo "ulimit -u $lim: too low for $WAITERS" >&2; exit 1; }
echo "== $WAITERS waiters behind one holder of ${HOLD}s"
$DL run -q --key w -- sh -c 'touch "$0"; sleep "$1"; date +%s.%N >"$0.end"' "$TMP/w.held" "$HOLD" & hpid=$!
for _ in $(seq 100); do [[ -e $TMP/w.held ]] && break; sleep 0.1; done   # so all really wait
[[ -e $TMP/w.held ]] || { echo "the holder did not get key w" >&2; exit 1; }
zk monitor "$TMP/w.stop" "$TMP/herd.json" & mpid=$!
t0=$(date +%s.%N); pids=()
for _ in $(seq "$WAITERS"); do $DL run -q --key w -- true 2>>"$TMP/w.err" & pids+=($!); done
fail=0; for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done; t1=$(date +%s.%N)
wait "$hpid" || { echo "the holder failed" >&2; exit 1; }; touch "$TMP/w.stop"; wait "$mpid"
[[ -s $TMP/w.err ]] && { echo "note: waiters printed:" >&2; sort "$TMP/w.err" | uniq -c | head -5 >&2; }

# --- summary ----------------------------------------------------------------------
python3 - "$TMP"/{unc,con,herd}.json "$t0" "$(cat "$TMP/w.held.end")" "$t1" "$WAITERS" "$fail" \
  <<'EOF' >"$TMP/table.md"
import json, sys
res = lambda p: {r["command"]: r for r in json.load(open(p))["results"]}
fmt = lambda s: "n/a" if s is None else f"{s*1e3:.1f} ms" if s < 1 else f"{s:.2f} s"   # σ null if 1 run
u, c, h = res(sys.argv[1]), res(sys.argv[2]), json.load(open(sys.argv[3]))
t0, trel, t1, n, fail = map(float, sys.argv[4:9]); m = lambda d, k: d[k]["mean"]
print("| scenario | contender | mean ± σ | min |\n|---|---|---|---|")
for label, d in [("uncontended, one `run -- true`", u), ("8 loops x 20 runs, one key", c)]:
    for name, r in d.items():
        print(f"| {label} | {name} | {fmt(r['mean'])} ± {fmt(r['stddev'])} | {fmt(r['min'])} |")
print("\n| ratio (of means) | value | goal |\n|---|---|---|")
for label, a, b, goal in [("dlock / kazoo Lock", m(u, "dlock"), m(u, "kazoo"), "<= 0.15x"),
                          ("dlock / flock", m(u, "dlock"), m(u, "flock"), ""),
                          ("dlock --shared / dlock", m(u, "dlock --shared"), m(u, "dlock"), "<= 1.1x"),
                          ("contended: dlock / flock", m(c, "dlock"), m(c, "flock"), "<= 2x")]:
    print(f"| {label} | {a/b:.2f}x | {goal} |")
print(f"\n| {n:.0f} waiters on one key | value |\n|---|---|")
for k, v in [("exited non-zero", f"{fail:.0f}"), ("total, launch to last exit", fmt(t1 - t0)),
             ("drain after the holder's release", f"{fmt(t1 - trel)} ({(t1 - trel) / n * 1e3:.1f} ms per hand-off)"),
             ("peak `wchs`: connections / paths / watches (paths = watches: one each)",
              f"{h.get('conns')} / {h.get('paths')} / {h['watches']}"),
             ("deletions that fired a watch (`mntr` delta)", h["deleted"]),
             ("most watches fired by one deletion (`mntr`, server lifetime)", h["max_deleted"]),
             ("child watches fired (`mntr` delta)", h["children"]),
             ("requests received (`mntr` delta), per waiter", f"{h['packets']}, {h['packets'] / n:.1f}")]:
    print(f"| {k} | {v} |")
EOF
cat <<EOF

## dlock on ZooKeeper vs kazoo's Lock and flock(1)

$(cat "$TMP/table.md")

- means of hyperfine: $RUNS runs (uncontended, -N, 5 warmup), $CRUNS runs (contended, -N, 1 warmup)
- one standalone ZooKeeper on 127.0.0.1, same machine, zoo.cfg as the tests' (tickTime=200, forceSync=no)
- $WAITERS waiters: \`dlock run --key w -- true\` in the background behind \`run --key w\` holding ${HOLD}s
- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs may share the machine)

Machine: nproc $(nproc), kernel $(uname -r), $(java -version 2>&1 | head -1), ZooKeeper $(zk flw srvr | sed -n 's/^Zookeeper version: \([^-,]*\).*/\1/p'), $("$DLOCK" --version), $(hyperfine --version), kazoo $(python3 -c 'import kazoo; print(kazoo.__version__)')
EOF
[[ $fail == 0 ]] || { echo "$fail of $WAITERS waiters failed" >&2; exit 1; }
