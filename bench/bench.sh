#!/usr/bin/env bash
# Whole-process comparison of `dlock run` (SQLite backend) against flock(1):
# uncontended latency, contended throughput on one key, and peak RSS.
# Usage: bench/bench.sh            (env: DLOCK=path RUNS=300 CRUNS=5)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-300}
CRUNS=${CRUNS:-5}

# --- tools -------------------------------------------------------------------
if [[ ! -x $DLOCK ]]; then
  echo "dlock not found at $DLOCK; building it (cargo build --release)" >&2
  (cd "$here/.." && cargo build --release)
  DLOCK=$here/../target/release/dlock
fi
DLOCK=$(realpath "$DLOCK")
if ! command -v hyperfine >/dev/null; then
  echo "hyperfine is missing; it comes from the Debian package 'hyperfine'" >&2
  if [[ $(id -u) -eq 0 ]]; then apt-get install -y hyperfine; else exit 1; fi
fi
if [[ ! -x /usr/bin/time && $(id -u) -eq 0 ]]; then
  echo "GNU time is missing; installing the Debian package 'time'" >&2
  apt-get install -y time || true   # fallback below reads /proc instead
fi

# --- isolation: fresh dir, no DLOCK_* settings, no user/system config file --------
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
DL="$DLOCK --backend sqlite:$TMP/locks.db"   # word-split on purpose (no spaces in paths)
FL="flock $TMP/flock.lock"

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n flock "$FL true" -n dlock "$DL run --key b -- true" \
  -n dlock-shared "$DL run --shared --key b -- true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
# A generated script (run with -N) so hyperfine times the whole batch; each
# loop's exit status is checked, so a failed lock attempt fails the benchmark.
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
pids=()
for j in $(seq 8); do
  ( for i in $(seq 20); do "$@"; done ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n flock "$TMP/contend.sh $FL true" \
  -n dlock "$TMP/contend.sh $DL run --key b -- true"

# --- 3. peak RSS: a holder of key w, and a waiter blocked behind it ------------------
echo "== peak RSS"
$DL run --key w -- sleep 3 2>/dev/null &
holder=$!
sleep 0.3                                  # let the holder take the lock
start=$(date +%s.%N)
if [[ -x /usr/bin/time ]]; then
  /usr/bin/time -f %M -o "$TMP/waiter.rss" $DL run --key w -- true 2>/dev/null &
  waiter=$!
else
  $DL run --key w -- true 2>/dev/null &
  waiter=$!
fi
sleep 1.5                                  # both are now mid-wait / mid-hold
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
holder_kib=$(hwm "$holder")
# /proc fallback: the dlock process is the time(1) child, or $waiter itself
wpid=$(pgrep -P "$waiter" -x dlock || echo "$waiter")
waiter_proc_kib=$(hwm "$wpid")
wait "$waiter"
waited=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
wait "$holder"
if [[ -s $TMP/waiter.rss ]]; then waiter_kib=$(tail -1 "$TMP/waiter.rss"); src="GNU time %M"
else waiter_kib=$waiter_proc_kib; src="VmHWM while waiting"; fi
# sanity: the waiter must really have been blocked until the holder let go
awk -v w="$waited" 'BEGIN { exit !(w > 2.0) }' || { echo "waiter did not wait (${waited}s)" >&2; exit 1; }

# --- summary ----------------------------------------------------------------------
python3 - "$TMP/unc.json" "$TMP/con.json" <<'EOF' >"$TMP/table.md"
import json, sys
def means(path):
    return {r["command"]: r["mean"] for r in json.load(open(path))["results"]}
def fmt(s):
    return f"{s*1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
rows = [("uncontended, one `run -- true`", means(sys.argv[1])),
        ("8 loops x 20 runs, one key", means(sys.argv[2]))]
print("| scenario | flock | dlock (sqlite) | ratio |")
print("|---|---|---|---|")
for name, m in rows:
    print(f"| {name} | {fmt(m['flock'])} | {fmt(m['dlock'])} | {m['dlock']/m['flock']:.1f}x |")
u = rows[0][1]
print(f"\nUncontended `run --shared`: {fmt(u['dlock-shared'])}, "
      f"{u['dlock-shared']/u['dlock']:.2f}x exclusive (goal <= 1.1x).")
EOF
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k/1024 }'; }
cat <<EOF

## dlock vs flock(1)

$(cat "$TMP/table.md")

- peak RSS, waiting \`dlock run\` ($src): $waiter_kib KiB ($(mib "$waiter_kib") MiB); waited $(printf %.2f "$waited") s
- peak RSS, holding \`dlock run\` (VmHWM of the holder): $holder_kib KiB ($(mib "$holder_kib") MiB)
- means of hyperfine: $RUNS runs (uncontended, -N, 20 warmup), $CRUNS runs (contended, -N, 1 warmup)

Machine: nproc $(nproc), kernel $(uname -r), $("$DLOCK" --version), $(flock --version | head -1), $(hyperfine --version)
EOF
