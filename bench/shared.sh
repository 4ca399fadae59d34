# Sourced by the bench scripts: shared (`--shared`) against exclusive
# acquisition, uncontended, as whole processes (goal: shared ≤ 1.1x).
#   shared_vs_exclusive LABEL "DLOCK --backend URL"   (word-split on purpose)
# Appends a row to $TMP/shared.md; print_shared prints the table.
shared_vs_exclusive() {
  local label=$1 d=$2 out=$TMP/shared-$1.json
  echo "== $label: shared vs exclusive, uncontended ($RUNS runs each)"
  hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$out" \
    -n exclusive "$d run --key shared-bench -- true" \
    -n shared "$d run --shared --key shared-bench -- true"
  python3 - "$out" "$label" >>"$TMP/shared.md" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
x, s = r["exclusive"]["mean"], r["shared"]["mean"]
print(f"| {sys.argv[2]} | {x*1e3:.2f} ms | {s*1e3:.2f} ms | {s/x:.2f}x |")
PY
}

print_shared() {
  [[ -s $TMP/shared.md ]] || return 0
  echo
  echo "| shared vs exclusive, uncontended | exclusive | shared | ratio (goal ≤ 1.1x) |"
  echo "|---|---|---|---|"
  cat "$TMP/shared.md"
}
