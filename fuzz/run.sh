#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 30), starting from the committed corpus. New
# inputs go to a scratch dir, so the committed corpus changes only through
# `cargo fuzz cmin --fuzz-dir fuzz <target>`. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz builds with sanitizer flags that need a nightly compiler; the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
for target in paths range headers trust; do
    scratch=$(mktemp -d)
    echo "fuzz: $target for ${secs}s"
    cargo fuzz run --fuzz-dir . "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=0 2>&1 | tail -n 3
    rm -rf "$scratch"
done
