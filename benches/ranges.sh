#!/usr/bin/env bash
# Lazy pullers' ranges on a cold blob, through berth against straight from upstream, side by
# side: distribution holds a blob of --mib MiB behind e2e/faultproxy.py, which sends blob
# bodies at --rate bytes a second per connection (a slow upstream or CDN edge). Each case is
# asked of a fresh berth (empty disk) and of the proxy directly, --runs times:
#   (a) a 64 KiB range at the end (an eStargz footer)
#   (b) a 64 KiB range in the middle
#   (c) 10 ranges of 64 KiB spread over the blob, in one request (multipart/byteranges)
#   (d) the whole blob, berth's fill over [storage] fill_connections (4) against one GET
# Printed: median (min-max) time to the first byte and to the last, their ratio, and the
# upstream requests berth made for the case (GETs with and without Range, from the proxy's
# log): one full fetch, plus the ranges it fetched ahead of it.
#
#   BERTH_BIN=target/release/berth bash benches/ranges.sh [--mib 1024] [--rate 52428800] [--runs 3]
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=e2e/lib.sh
. "$HERE/../e2e/lib.sh"

MIB=1024 RATE=52428800 RUNS=3
while [ $# -gt 0 ]; do
    case $1 in
        --mib) MIB=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        *) echo "usage: $0 [--mib N] [--rate BYTES_PER_SEC] [--runs N]" >&2; exit 2 ;;
    esac
done
[ -x "$BERTH_BIN" ] || { echo "ranges.sh: no berth binary at $BERTH_BIN" >&2; exit 2; }

start_upstream || exit 1
python3 "$HERE/compare/push.py" "$UP_URL" "$E2E_DIR" $((MIB << 20)) 1 0 >/dev/null || exit 1
# shellcheck disable=SC1091
. "$E2E_DIR/content.sh"
BLOB=${BIG_LAYERS[0]}
PROXY_PORT=15300 PROXY_LOG="$E2E_DIR/proxy.log"
python3 "$HERE/../e2e/faultproxy.py" "$PROXY_PORT" "${UP_ADDR##*:}" >"$PROXY_LOG" 2>&1 &
_track $!
wait_for_port "127.0.0.1:$PROXY_PORT" 10 || exit 1
curl -sf "http://127.0.0.1:$PROXY_PORT/__mode/throttle:$RATE" >/dev/null || exit 1
DIRECT="http://127.0.0.1:$PROXY_PORT"
LEN=$((MIB << 20))
K=65536
case_range() {
    case $1 in
        a) echo "bytes=$((LEN - K))-$((LEN - 1))" ;;
        b) echo "bytes=$((LEN / 2))-$((LEN / 2 + K - 1))" ;;
        c) local i s=() step=$((LEN / 10))
           for ((i = 0; i < 10; i++)); do s+=("$((i * step + step / 2))-$((i * step + step / 2 + K - 1))"); done
           (IFS=,; echo "bytes=${s[*]}") ;;
    esac
}

# fresh_berth: a berth with an empty disk, upstream = the proxy
fresh_berth() {
    stop_berth
    rm -rf "$E2E_DIR/berth-data"
    cat >"$E2E_DIR/berth.toml" <<CONF
[server]
listen = "$BERTH_ADDR"
admin_listen = "$ADMIN_ADDR"
default_registry = "bench.test"
[storage]
dir = "$E2E_DIR/berth-data"
disk_capacity = "$((MIB * 3))MiB"
[[registry]]
host = "bench.test"
endpoint = "$DIRECT"
CONF
    "$BERTH_BIN" serve --config "$E2E_DIR/berth.toml" >>"$BERTH_LOG" 2>&1 &
    BERTH_PID=$!
    _track "$BERTH_PID"
    _wait_mirror "http://$ADMIN_ADDR/healthz"
}

# timed URL RANGE: "<first byte s> <total s> <status>" of one GET
timed() {
    curl -s -o /dev/null -H "Range: $2" -w '%{time_starttransfer} %{time_total} %{http_code}' "$1"
}

median() { sort -g | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.4f (%.4f-%.4f)", m, a[1], a[NR]}'; }
med() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-34s %-30s %-30s %-8s %s\n' "case (${MIB} MiB at $RATE B/s)" "first byte s: berth" "direct" "ratio" "upstream GETs (full + ranged)"
for c in a b c; do
    range=$(case_range $c)
    : >"$E2E_DIR/b.first"; : >"$E2E_DIR/d.first"; ups=
    for ((r = 0; r < RUNS; r++)); do
        fresh_berth || exit 1
        mark=$(wc -l <"$PROXY_LOG")
        read -r bf _ bs < <(timed "$BERTH_URL/v2/bench/big/blobs/$BLOB" "$range")
        [ "$bs" = 206 ] || { echo "berth answered $bs for case $c" >&2; exit 1; }
        sleep 0.5
        full=$(tail -n +$((mark + 1)) "$PROXY_LOG" | grep -c "^GET .*/blobs/$BLOB - " || true)
        ranged=$(tail -n +$((mark + 1)) "$PROXY_LOG" | grep -c "^GET .*/blobs/$BLOB bytes=" || true)
        ups="$ups $full+$ranged"
        stop_berth
        read -r df _ ds < <(timed "$DIRECT/v2/bench/big/blobs/$BLOB" "$range")
        [ "$ds" = 206 ] || { echo "upstream answered $ds for case $c" >&2; exit 1; }
        echo "$bf" >>"$E2E_DIR/b.first"; echo "$df" >>"$E2E_DIR/d.first"
    done
    bm=$(med <"$E2E_DIR/b.first"); dm=$(med <"$E2E_DIR/d.first")
    printf '%-34s %-30s %-30s %-8s %s\n' "($c) $range" | cut -c1-200 >/dev/null
    printf '%-34s %-30s %-30s %-8s %s\n' "($c)" "$(median <"$E2E_DIR/b.first")" "$(median <"$E2E_DIR/d.first")" \
        "$(awk -v b="$bm" -v d="$dm" 'BEGIN {printf "%.2f", b / d}')x" "$ups"
done

# (d) a cold whole GET over a per-connection throttle: berth's fill over fill_connections
# (default 4) against one direct GET; "bytes" is what berth read from upstream
# (berth_upstream_bytes_total) against the blob's length.
: >"$E2E_DIR/b.total"; : >"$E2E_DIR/d.total"; ups=
for ((r = 0; r < RUNS; r++)); do
    fresh_berth || exit 1
    mark=$(wc -l <"$PROXY_LOG")
    read -r _ bt bs < <(curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{http_code}' \
        "$BERTH_URL/v2/bench/big/blobs/$BLOB")
    [ "$bs" = 200 ] || { echo "berth answered $bs for case d" >&2; exit 1; }
    got=$(curl -s "http://$ADMIN_ADDR/metrics" | awk '/^berth_upstream_bytes_total/ {s += $NF} END {printf "%.0f", s}')
    full=$(tail -n +$((mark + 1)) "$PROXY_LOG" | grep -c "^GET .*/blobs/$BLOB - " || true)
    ranged=$(tail -n +$((mark + 1)) "$PROXY_LOG" | grep -c "^GET .*/blobs/$BLOB bytes=" || true)
    ups="$ups $full+$ranged/$(awk -v g="$got" -v l="$LEN" 'BEGIN {printf "%.3f", g / l}')"
    stop_berth
    read -r _ dt ds < <(curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{http_code}' \
        "$DIRECT/v2/bench/big/blobs/$BLOB")
    [ "$ds" = 200 ] || { echo "upstream answered $ds for case d" >&2; exit 1; }
    echo "$bt" >>"$E2E_DIR/b.total"; echo "$dt" >>"$E2E_DIR/d.total"
done
bm=$(med <"$E2E_DIR/b.total"); dm=$(med <"$E2E_DIR/d.total")
echo
printf '%-34s %-30s %-30s %-8s %s\n' "cold whole GET" "total s: berth" "direct" "speed-up" "upstream GETs (full+ranged/bytes read÷length)"
printf '%-34s %-30s %-30s %-8s %s\n' "(d)" "$(median <"$E2E_DIR/b.total")" "$(median <"$E2E_DIR/d.total")" \
    "$(awk -v b="$bm" -v d="$dm" 'BEGIN {printf "%.2f", d / b}')x" "$ups"
