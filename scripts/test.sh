#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
# installs what the tests need, then runs lint and every test against real
# processes (and, as backends land, real servers started by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs; the tests fail naming a missing one.
need=()
for pair in "flock:util-linux" "date:coreutils" "redis-server:redis-server" "redis-cli:redis-tools" \
  "mariadbd:mariadb-server" "mariadb:mariadb-client" "python3:python3" "openssl:openssl" \
  "etcd:etcd-server" "etcdctl:etcd-client"; do
  command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null || need+=(zookeeper)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
fi

# redis-py and kazoo, for the interoperability tests, for the python3 the
# tests run (the first on PATH). Debian's own python3 takes them as Debian
# packages: its pip refuses to install into it (PEP 668,
# externally-managed-environment). Another python3 (pyenv, a virtual
# environment) takes them from PyPI with its own pip.
if ! python3 -c 'import redis, kazoo' 2>/dev/null; then
  if [ "$(readlink -f "$(command -v python3)")" = "$(readlink -f /usr/bin/python3)" ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-redis python3-kazoo
    else
      echo "missing Debian packages: python3-redis python3-kazoo (run as root to install them)" >&2
      exit 1
    fi
  else
    python3 -m pip install --quiet redis kazoo
  fi
fi
python3 -c 'import redis, kazoo'

# `scripts/test.sh --deps-only`: install what the tests need, run nothing.
if [ "${1:-}" = --deps-only ]; then
  exit 0
fi

# Servers are started by the tests themselves; make sure no system service
# holds the default ports or the CPU.
if command -v systemctl >/dev/null; then
  systemctl stop redis-server postgresql mariadb zookeeper 2>/dev/null || true
fi

cargo fmt --all -- --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
cargo test --all-targets --all-features --no-fail-fast
