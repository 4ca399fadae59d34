#!/usr/bin/env bash
# Whole-process comparison of `dlock run` on Redis against what people use today:
# a redis-cli shell script, redis-py's Lock, Redlock over 5 servers, and flock(1).
# Usage: bench/bench-redis.sh      (env: DLOCK=path RUNS=200 CRUNS=3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-200}
CRUNS=${CRUNS:-3}

# --- tools -------------------------------------------------------------------
if [[ ! -x $DLOCK ]]; then
  echo "dlock not found at $DLOCK; building it (cargo build --release)" >&2
  (cd "$here/.." && cargo build --release)
  DLOCK=$here/../target/release/dlock
fi
DLOCK=$(realpath "$DLOCK")
need() {   # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return
  echo "$1 is missing; it comes from the Debian package '$2'" >&2
  if [[ $(id -u) -eq 0 ]]; then apt-get install -y "$2"; else exit 1; fi
}
need hyperfine hyperfine
need redis-server redis-server
need redis-cli redis-tools      # a dependency of redis-server, checked anyway
if ! python3 -c 'import redis' 2>/dev/null; then
  echo "python module 'redis' (redis-py) is missing; installing it with pip" >&2
  python3 -m pip install redis
fi

# --- isolation: fresh dir, no DLOCK_* settings, no user/system config file --------
TMP=$(mktemp -d)
cleanup() {   # stop our redis servers (pids from their pidfiles), then drop the dir
  local f pids=()
  for f in "$TMP"/redis/*.pid; do [[ -s $f ]] && pids+=("$(cat "$f")"); done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
mkdir -p "$TMP/redis"

# --- redis servers: 1 for single-server runs, 5 for Redlock, on free loopback ports ---
# The kernel picks the ports (bind to 0); all six sockets are open at once so they differ.
read -r -a ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
for p in "${ports[@]}"; do
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP/redis" --daemonize yes --pidfile "$TMP/redis/$p.pid" >/dev/null
done
for p in "${ports[@]}"; do   # wait until each answers PING
  for _ in $(seq 50); do [[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] && break; sleep 0.1; done
  [[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] || { echo "redis on port $p did not start" >&2; exit 1; }
done
P=${ports[0]}
RL=$(printf 'redis://127.0.0.1:%s,' "${ports[@]:1}"); RL=${RL%,}   # 5 Redlock URLs
DL="$DLOCK --backend redis://127.0.0.1:$P"   # word-split on purpose (no spaces in paths)
DR="$DLOCK --backend $RL"
FL="flock $TMP/f.lock"

# --- contenders users write today (same key dlock:b, same SET NX PX + compare-and-delete) ---
# /bin/sh, not bash: the cheapest shell, so the comparison does not favour dlock.
cat >"$TMP/redis-cli-lock.sh" <<'EOF'
#!/bin/sh
set -u
tok=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')
[ "$(redis-cli -p @P@ SET dlock:b "$tok" NX PX 30000)" = OK ] || exit 75
"$@"; rc=$?
[ "$(redis-cli -p @P@ EVAL "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end" 1 dlock:b "$tok")" = 1 ] || exit 74
exit $rc
EOF
# host given as 127.0.0.1: "localhost" may try ::1 first, which the server does not bind.
cat >"$TMP/redis-py-lock.py" <<'EOF'
import subprocess, sys, redis
r = redis.Redis(host="127.0.0.1", port=@P@)
l = r.lock("dlock:b", timeout=30)
l.acquire()
rc = subprocess.run(sys.argv[1:]).returncode
l.release()
sys.exit(rc)
EOF
sed -i "s/@P@/$P/g" "$TMP/redis-cli-lock.sh" "$TMP/redis-py-lock.py"
chmod +x "$TMP/redis-cli-lock.sh"
SH="$TMP/redis-cli-lock.sh"
PY="python3 $TMP/redis-py-lock.py"

# --- sanity: each contender really holds dlock:b while CMD runs, and frees it after ---
# A script, not an exported function: /bin/sh (dash) drops bash functions from the env.
printf '%s\n' '#!/bin/sh' 'for p; do redis-cli -p "$p" EXISTS dlock:b; done | awk "{ s += \$1 } END { print s + 0 }"' >"$TMP/held"
chmod +x "$TMP/held"
held() { "$TMP/held" "$@"; }
for c in "$DL run -q --key b --" "$SH" "$PY"; do
  n=$($c "$TMP/held" "$P")
  [[ $n == 1 && $(held "$P") == 0 ]] || { echo "sanity: '$c' held=$n" >&2; exit 1; }
done
n=$($DR run -q --key b -- "$TMP/held" "${ports[@]:1}")
[[ $n -ge 3 && $(held "${ports[@]:1}") == 0 ]] || { echo "sanity: redlock held on $n/5" >&2; exit 1; }

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n dlock "$DL run --key b -- true" \
  -n dlock-shared "$DL run --shared --key b -- true" \
  -n redis-cli-script "$SH true" \
  -n redis-py "$PY true" \
  -n redlock5 "$DR run --key b -- true" \
  -n redlock5-shared "$DR run --shared --key b -- true" \
  -n flock "$FL true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
# A generated script (run with -N) so hyperfine times the whole batch; each
# loop's exit status is checked, so a failed lock attempt fails the benchmark.
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
pids=()
for j in $(seq 8); do
  ( for i in $(seq 20); do "$@" || exit; done ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n dlock "$TMP/contend.sh $DL run --key b -- true" \
  -n flock "$TMP/contend.sh $FL true"

# --- summary ----------------------------------------------------------------------
python3 - "$TMP/unc.json" "$TMP/con.json" <<'EOF' >"$TMP/table.md"
import json, sys
def res(path):
    return {r["command"]: r for r in json.load(open(path))["results"]}
def fmt(s):  # stddev is null when CRUNS=1
    return "n/a" if s is None else f"{s*1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
u, c = res(sys.argv[1]), res(sys.argv[2])
print("| scenario | contender | mean ± σ | min |")
print("|---|---|---|---|")
for name in ["dlock", "dlock-shared", "redis-cli-script", "redis-py", "redlock5", "redlock5-shared", "flock"]:
    r = u[name]
    print(f"| uncontended, one `run -- true` | {name} | {fmt(r['mean'])} ± {fmt(r['stddev'])} | {fmt(r['min'])} |")
for name in ["dlock", "flock"]:
    r = c[name]
    print(f"| 8 loops x 20 runs, one key | {name} | {fmt(r['mean'])} ± {fmt(r['stddev'])} | {fmt(r['min'])} |")
m = lambda d, k: d[k]["mean"]
print("\n| ratio (of means) | value |")
print("|---|---|")
for label, a, b in [("dlock / redis-cli script", m(u, "dlock"), m(u, "redis-cli-script")),
                    ("dlock / redis-py Lock", m(u, "dlock"), m(u, "redis-py")),
                    ("redlock (5 servers) / dlock single", m(u, "redlock5"), m(u, "dlock")),
                    ("dlock single / flock", m(u, "dlock"), m(u, "flock")),
                    ("dlock --shared / exclusive (goal <= 1.1x)", m(u, "dlock-shared"), m(u, "dlock")),
                    ("redlock --shared / exclusive (goal <= 1.1x)", m(u, "redlock5-shared"), m(u, "redlock5")),
                    ("contended: dlock / flock", m(c, "dlock"), m(c, "flock"))]:
    print(f"| {label} | {a/b:.2f}x |")
EOF
cat <<EOF

## dlock on Redis vs redis-cli, redis-py, Redlock and flock(1)

$(cat "$TMP/table.md")

- means of hyperfine: $RUNS runs (uncontended, -N, 20 warmup), $CRUNS runs (contended, -N, 1 warmup)
- redis-server on 127.0.0.1 (no persistence), same machine; Redlock: 5 such servers

Machine: nproc $(nproc), kernel $(uname -r), $(redis-server --version | cut -d' ' -f1-3), $("$DLOCK" --version), $(hyperfine --version), redis-py $(python3 -c 'import redis; print(redis.__version__)')
EOF
