#!/usr/bin/env bash
# Whole-process comparison of `dlock run` on etcd v3 against `etcdctl lock`
# (same key layout: dlock/KEY/<lease>) and flock(1). Starts its own etcd.
# Usage: bench/bench-etcd.sh       (env: DLOCK=path RUNS=100 CRUNS=3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-100}
CRUNS=${CRUNS:-3}

# --- tools -------------------------------------------------------------------
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
DLOCK=$(realpath "$DLOCK")
for t in hyperfine etcd etcdctl flock python3; do   # Debian: hyperfine, etcd-server,
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }   # etcd-client, util-linux
done

# --- isolation: fresh dir, no DLOCK_* settings, no user/system config file --------
# ETCD_* / ETCDCTL_* too: they would configure our server or point etcdctl elsewhere.
TMP=$(mktemp -d)
epid=
cleanup() {   # stop etcd (SIGTERM, SIGKILL after 10 s), reap it, drop the dir
  if [[ -n $epid ]]; then
    kill "$epid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$epid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$epid" 2>/dev/null || true; wait "$epid" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(DLOCK|ETCD|ETCDCTL)_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
export ETCDCTL_API=3   # etcd 3.4's etcdctl defaults to v3 anyway; older ones do not

# --- etcd: one member, client + peer on free loopback ports (as tests/common/servers.rs) ---
# Both sockets open at once so the kernel gives two different ports.
read -r P Q < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]; [s.bind(("127.0.0.1", 0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])')
mkdir "$TMP/etcd"
etcd --name n1 --data-dir "$TMP/etcd/data" \
  --listen-client-urls "http://127.0.0.1:$P" --advertise-client-urls "http://127.0.0.1:$P" \
  --listen-peer-urls "http://127.0.0.1:$Q" --initial-advertise-peer-urls "http://127.0.0.1:$Q" \
  --initial-cluster "n1=http://127.0.0.1:$Q" --log-level warn \
  </dev/null >/dev/null 2>"$TMP/etcd/etcd.log" &
epid=$!
CTL="etcdctl --endpoints 127.0.0.1:$P"   # word-split on purpose (no spaces in it)
# The port opens before the member has a leader: wait for a committed proposal.
for _ in $(seq 200); do
  $CTL endpoint health 2>&1 | grep -q 'is healthy' && break
  kill -0 "$epid" 2>/dev/null || break; sleep 0.1
done
$CTL endpoint health 2>&1 | grep -q 'is healthy' \
  || { echo "etcd did not start; $TMP/etcd/etcd.log:" >&2; tail -20 "$TMP/etcd/etcd.log" >&2; exit 1; }

DL="$DLOCK --backend etcd://127.0.0.1:$P"
EL="$CTL lock dlock/b --"   # --: else etcdctl parses CMD's flags as its own
FL="flock $TMP/f.lock"

# --- sanity: each contender puts one key under dlock/b/ while CMD runs, none after;
# and dlock sees etcdctl's key as a holder (same lock, so both really wait below) ---
printf '%s\n' '#!/bin/sh' "$CTL get --prefix dlock/b/ --keys-only | grep -c . || true" >"$TMP/held"
chmod +x "$TMP/held"
for c in "$DL run -q --key b --" "$EL"; do
  n=$($c "$TMP/held")
  [[ $n == 1 && $("$TMP/held") == 0 ]] || { echo "sanity: '$c' held=$n" >&2; exit 1; }
done
rc=$($EL sh -c "$DL run -q -n --key b -- true; echo \$?")
[[ $rc == 75 ]] || { echo "sanity: dlock -n under etcdctl lock gave $rc, not 75" >&2; exit 1; }

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n dlock "$DL run --key b -- true" \
  -n "dlock --shared" "$DL run --shared --key b -- true" \
  -n etcdctl "$EL true" \
  -n flock "$FL true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
# A generated script (run with -N) so hyperfine times the whole batch; each loop's
# exit status is checked, so a failed lock attempt fails the benchmark. Both wait.
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
pids=()
for j in $(seq 8); do ( for i in $(seq 20); do "$@" || exit; done ) & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
# One round outside hyperfine (which hides output): CMD holds a second, no-wait
# flock, so two holders at once fail the loop; anything dlock prints is kept.
for c in "$DL run --key b --" "$EL"; do
  "$TMP/contend.sh" $c flock -n -E 99 "$TMP/x.lock" sleep 0.005 >/dev/null 2>"$TMP/con.err" \
    || { echo "sanity: '$c' let two hold at once, or failed:" >&2; cat "$TMP/con.err" >&2; exit 1; }
  if [[ -s $TMP/con.err ]]; then echo "note: '$c' under contention printed:" >&2; head -5 "$TMP/con.err" >&2; fi
done
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n dlock "$TMP/contend.sh $DL run --key b -- true" \
  -n etcdctl "$TMP/contend.sh $EL true" \
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
for label, d in [("uncontended, one `run -- true`", u), ("8 loops x 20 runs, one key", c)]:
    for name in ["dlock", "dlock --shared", "etcdctl", "flock"]:
        if name not in d:
            continue
        r = d[name]
        print(f"| {label} | {name} | {fmt(r['mean'])} ± {fmt(r['stddev'])} | {fmt(r['min'])} |")
m = lambda d, k: d[k]["mean"]
print("\n| ratio (of means) | value | goal |")
print("|---|---|---|")
for label, a, b, goal in [("dlock / etcdctl lock", m(u, "dlock"), m(u, "etcdctl"), "<= 0.5x"),
                          ("dlock / flock", m(u, "dlock"), m(u, "flock"), ""),
                          ("dlock --shared / dlock", m(u, "dlock --shared"), m(u, "dlock"), "<= 1.1x"),
                          ("contended: dlock / etcdctl lock", m(c, "dlock"), m(c, "etcdctl"), "<= 0.5x"),
                          ("contended: dlock / flock", m(c, "dlock"), m(c, "flock"), "")]:
    print(f"| {label} | {a/b:.2f}x | {goal} |")
EOF
cat <<EOF

## dlock on etcd vs etcdctl lock and flock(1)

$(cat "$TMP/table.md")

- means of hyperfine: $RUNS runs (uncontended, -N, 10 warmup), $CRUNS runs (contended, -N, 1 warmup)
- one etcd member on 127.0.0.1, same machine; both lock key dlock/b (etcdctl lock layout)

Machine: nproc $(nproc), kernel $(uname -r), $(etcd --version | head -1), $("$DLOCK" --version), $(hyperfine --version)
EOF
