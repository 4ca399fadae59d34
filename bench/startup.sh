#!/usr/bin/env bash
# Start-up: `dlock --version` against a Rust hello-world built with dlock's own
# release profile (fat LTO, one codegen unit, stripped, panic=abort), side by
# side in one hyperfine run, plus `flock FILE true` and `dlock run -- true` on
# SQLite for scale; then the counts that do not depend on load: dynamic
# relocations, shared libraries, binary size, and (with valgrind installed)
# instructions executed by each.
# Usage: bench/startup.sh        (env: DLOCK=path RUNS=300)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DLOCK=${DLOCK:-$here/../target/release/dlock}
RUNS=${RUNS:-300}
[[ -x $DLOCK ]] || { echo "dlock not found at $DLOCK: run cargo build --release" >&2; exit 1; }
DLOCK=$(realpath "$DLOCK")
command -v hyperfine >/dev/null || { echo "hyperfine is missing (Debian: hyperfine)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state

# --- the hello-world, with the [profile.release] of dlock's Cargo.toml ---------
mkdir -p "$TMP/hello/src"
cat >"$TMP/hello/Cargo.toml" <<'EOF'
[package]
name = "hello"
version = "0.1.0"
edition = "2024"

[profile.release]
lto = "fat"
codegen-units = 1
strip = true
panic = "abort"
EOF
echo 'fn main() { println!("hello 0.1.0"); }' >"$TMP/hello/src/main.rs"
# dlock's own linker settings (.cargo/config.toml) apply to the hello-world too.
[[ -f $here/../.cargo/config.toml ]] && mkdir -p "$TMP/hello/.cargo" \
  && cp "$here/../.cargo/config.toml" "$TMP/hello/.cargo/"
(cd "$TMP/hello" && cargo build --release --quiet)
HELLO=$TMP/hello/target/release/hello

echo "== start-up ($RUNS runs each, -N: no shell)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$TMP/start.json" \
  -n hello "$HELLO" -n dlock-version "$DLOCK --version" \
  -n flock "flock $TMP/f.lock true" -n dlock-run "$DLOCK --backend sqlite:$TMP/l.db run --key b -- true"

counts() {   # counts NAME BINARY ARGS...
  local relocs libs size ir=""
  relocs=$(readelf -rW "$2" 2>/dev/null | grep -cE '^[0-9a-f]{8,} ' || true)
  libs=$(readelf -dW "$2" 2>/dev/null | grep -c NEEDED || true)
  size=$(stat -c %s "$2")
  if command -v valgrind >/dev/null; then
    # The last process to report is the one started (the guard, forked
    # from it, reports first).
    ir=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "${@:2}" 2>&1 >/dev/null \
      | awk '/Collected/ {print $4}' | tail -1)
  fi
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$relocs" "$libs" "$size" "${ir:-n/a}"
}
python3 - "$TMP/start.json" <<'EOF'
import json, sys
m = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
h, v = m["hello"], m["dlock-version"]
print(f"\n| | mean | median |\n|---|---|---|")
for k, r in m.items():
    print(f"| {k} | {r['mean']*1e3:.2f} ms | {r['median']*1e3:.2f} ms |")
print(f"\n`dlock --version` / hello-world: {v['mean']/h['mean']:.2f}x (mean), "
      f"{v['median']/h['median']:.2f}x (median); goal <= 1.3x")
print(f"`dlock run -- true` / flock: {m['dlock-run']['mean']/m['flock']['mean']:.2f}x (mean); goal <= 1.5x")
EOF
echo
echo "| binary | dynamic relocations | shared libraries | bytes | instructions (callgrind) |"
echo "|---|---|---|---|---|"
counts hello "$HELLO"
counts "dlock --version" "$DLOCK" --version
counts "dlock run -- true (dlock's process only)" "$DLOCK" --backend "sqlite:$TMP/l.db" run --key b -- true
