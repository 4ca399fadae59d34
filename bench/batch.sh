# Sourced by bench/contended.sh, bench/floor.sh and bench/remote.sh (their
# arguments `URL [LOOPS] [RUNS] [-- DLOCK...]`), and by bench/side.sh and
# bench/handoff.sh: a scratch directory removed on exit, and an environment
# without the user's dlock settings (DLOCK_BACKEND, a config file), which
# must not reach the runs.

# bench_scratch: TMP, the scratch directory, and the environment above.
bench_scratch() {
  local v
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  while read -r v; do unset "$v"; done < <(compgen -e | grep '^DLOCK_' || true)
  export XDG_CONFIG_HOME=$TMP/config XDG_STATE_HOME=$TMP/state
}

need_flock() {
  command -v flock >/dev/null || { echo "flock(1) is missing (Debian: util-linux)" >&2; exit 1; }
}

# batch_setup HELP "$@" sets URL, LOOPS (8), RUNS (20), builds (the DLOCK
# paths given, made absolute) and TMP; HELP is the sed range of the
# calling script's usage text, printed when no URL is given.
batch_setup() {
  local help=$1 b
  shift
  [[ $# -ge 1 ]] || { sed -n "$help" "$0" >&2; exit 64; }
  URL=$1; shift
  LOOPS=8 RUNS=20
  if [[ $# -gt 0 && $1 != -- ]]; then LOOPS=$1; shift; fi
  if [[ $# -gt 0 && $1 != -- ]]; then RUNS=$1; shift; fi
  [[ ${1:-} == -- ]] && shift
  builds=()
  for b in "$@"; do builds+=("$(realpath "$b")"); done
  bench_scratch
}
