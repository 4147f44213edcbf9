#!/usr/bin/env bash
# Load: 200 concurrent clients (benches/loadgen.rs) for 60 s on berth and, side by side, on distribution in
# proxy mode, with a mix of manifest HEADs by tag and blob GETs over small images that come
# into play one after another, so cache misses (fills from upstream) keep arriving among the
# hits. Prints requests/s, errors (non-2xx and socket errors), upstream blob GETs and peak RSS
# for both, and the ratios.
#
#   benches/load.sh [--quick] [--out FILE]
#   BERTH_BIN=/path/to/berth benches/load.sh     # default: target/release/berth
#
# Exits non-zero when berth answered any request with an error or a socket error, fetched a
# blob from upstream more than once, or something did not start; distribution's errors are
# reported, not judged. Needs root (the e2e helpers' process tracking). Ports 17300-17499.
#
# --quick: 60 images, 5 s, 50 clients: keeps the harness working (CI), figures mean little.
set -u -o pipefail

QUICK=0 OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        -h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
command -v docker-registry >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >&2 ||
    { echo "load.sh: missing docker-registry" >&2; exit 2; }

UP_PORT=17300 BERTH_PORT=17350 ADMIN_PORT=17351
# shellcheck source=../e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
HERE="$E2E_ROOT/benches/compare"
MEM_CAP_MIB=512
LOADGEN=$E2E_ROOT/target/release/examples/loadgen
# shellcheck source=compare/services.sh
. "$HERE/services.sh"
PROXY_PORT=17400

if [ "$QUICK" = 1 ]; then
    MODE=quick IMAGES=60 SECS=5 CLIENTS=50
else
    MODE=full IMAGES=2000 SECS=60 CLIENTS=200
fi
[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/berth-load-$(date +%Y%m%d-%H%M%S).md"

upstream_blob_gets() { grep -cE '"GET /v2/bench/small/blobs/' "$UP_LOG" || true; }

# run_load WHO: the load client against WHO; fills V[load.WHO.*]
run_load() {
    local who=$1 out gets0
    gets0=$(upstream_blob_gets)
    out=$("$LOADGEN" "${URL[$who]}" "$E2E_DIR/small-blobs.txt" "$SECS" "$CLIENTS" 2>&1)
    local line; line=$(grep '^RESULT' <<<"$out") || { broken "$who: loadgen printed no result: $(tail -n 3 <<<"$out")"; return; }
    local requests duration_us non2xx errors bytes p50_us p99_us max_us
    eval "$(sed 's/^RESULT //; s/\([a-z_0-9]*\)=\([0-9]*\)/\1=\2;/g' <<<"$line")"
    V[load.$who.rps]=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    V[load.$who.requests]=$requests
    V[load.$who.errors]=$((non2xx + errors))
    V[load.$who.detail]="non-2xx $non2xx, transport errors $errors, latency p50 $((p50_us / 1000)) ms, p99 $((p99_us / 1000)) ms, max $((max_us / 1000)) ms, $((bytes >> 20)) MiB received"
    V[load.$who.gets]=$(($(upstream_blob_gets) - gets0))
    V[load.$who.rss]=$(awk -v k="$(awk '/^VmHWM:/ { print $2 }' "/proc/${PID[$who]}/status")" 'BEGIN { printf "%d", k / 1024 }')
    V[load.$who.rss_end]=$(awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/${PID[$who]}/status")
    stop_service "$who"
    log "$who: ${V[load.$who.rps]} req/s, errors ${V[load.$who.errors]} (${V[load.$who.detail]}), upstream blob GETs ${V[load.$who.gets]}, peak RSS ${V[load.$who.rss]} MiB"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

main() {
    log "$MODE mode: $CLIENTS clients for ${SECS}s over $IMAGES images; scratch dir $E2E_DIR"
    [ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN (set BERTH_BIN)"
    (cd "$E2E_ROOT" && cargo build --release --example loadgen -q) || die "building benches/loadgen.rs failed"
    start_upstream || die "upstream distribution did not start ($UP_LOG)"
    python3 "$HERE/push.py" "$UP_URL" "$E2E_DIR" 1024 1 "$IMAGES" || die "pushing the content failed"

    start_berth_as berth "$BERTH_PORT" "$ADMIN_PORT" 1MiB || die "berth did not start"
    run_load berth
    start_proxy_as proxy "$PROXY_PORT" || die "distribution proxy did not start"
    run_load proxy

    [ "${V[load.berth.errors]:-1}" = 0 ] || broken "berth answered with errors: ${V[load.berth.detail]:-no result}"
    # Each image's layer and config at most once (the shared layer once in all).
    local most=$((2 * IMAGES + 1))
    [ "${V[load.berth.gets]:-0}" -le "$most" ] || broken "berth fetched ${V[load.berth.gets]} blobs from upstream (at most $most exist)"
    {
        echo "| $MODE, $CLIENTS clients, ${SECS} s | berth | distribution proxy | berth / proxy |"
        echo "|---|---|---|---|"
        echo "| requests/s | ${V[load.berth.rps]:-} | ${V[load.proxy.rps]:-} | $(ratio "${V[load.berth.rps]:-0}" "${V[load.proxy.rps]:-0}") |"
        echo "| errors | ${V[load.berth.errors]:-} | ${V[load.proxy.errors]:-} | |"
        echo "| upstream blob GETs (misses filled) | ${V[load.berth.gets]:-} | ${V[load.proxy.gets]:-} | |"
        echo "| peak RSS, MiB | ${V[load.berth.rss]:-} | ${V[load.proxy.rss]:-} | $(ratio "${V[load.berth.rss]:-0}" "${V[load.proxy.rss]:-0}") |"
        echo "| RSS at the end, MiB | ${V[load.berth.rss_end]:-} | ${V[load.proxy.rss_end]:-} | |"
        echo
        echo "- berth: ${V[load.berth.detail]:-}; proxy: ${V[load.proxy.detail]:-}"
        echo "- $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg); the load client, the server and the upstream share them"
    } | tee "$OUT"
    print_broken
    [ ${#BROKEN[@]} = 0 ]
}

main
