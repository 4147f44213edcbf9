#!/usr/bin/env bash
# Side-by-side benchmark: berth vs distribution in proxy mode vs the references (distribution
# itself as the direct upstream, nginx serving the upstream's blob files with sendfile), all
# on this machine's loopback, with real clients (curl, wrk, ctr) doing the timing.
#
#   benches/compare.sh [--quick] [--out FILE] [--raw FILE]
#   BERTH_BIN=/path/to/berth benches/compare.sh      # default: target/release/berth
#   E2E_KEEP=1 benches/compare.sh                    # keep the scratch dir (all logs)
#
# This script starts and stops the services and times the transfers. It writes every
# measurement as one JSON line to the raw file (--raw; default FILE with .md replaced by
# .jsonl; the format is described in compare/report.py). At the end compare/report.py turns
# that file into one markdown table (each figure the median of its runs with min–max, ratios
# of medians, targets, met?) and the notes, prints it and writes it to FILE (default
# ${TMPDIR:-/tmp}/berth-compare-<time>.md); `report.py RAW` rebuilds it from a kept raw file.
#
# Exits non-zero only when something is broken: a service did not start, a transfer failed
# or delivered wrong bytes, a berth GET was not answered by the tier a figure claims, or
# berth fetched a blob from upstream more than once (each is also a "broken" line in the raw
# file). A missed timing target never fails the run. Needs root (containerd; nginx runs as
# root to read the 0700 scratch dir). Ports 17000-17999.
#
# Every figure is measured in RUNS runs, each on mirrors started with fresh storage (so each
# cold figure is cold) and with its references measured in the same run. Full mode: RUNS=3,
# 4 x 256 MiB layers, 50 small images, 5 s wrk runs (9 minutes at load average 7). --quick:
# RUNS=2, 4 x 4 MiB layers, 10 small images, 1 s wrk runs, ~35 s: checks that the harness
# works (CI), figures mean little.
#
# Helpers in benches/compare/: push.py (generates and pushes the content), report.py (the
# table; its unit tests, test_report.py, run first), manifests.lua (wrk: rotating manifest
# GETs, counts non-2xx), nginx.conf.in. Process start/stop, the scratch dir, the cleanup trap
# and containerd come from e2e/lib.sh.
set -u -o pipefail

QUICK=0 OUT= RAW=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --raw) RAW=${2:?--raw needs a file}; shift ;;
        -h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || { echo "compare.sh: needs root (containerd, nginx)" >&2; exit 2; }

# ---- tools -------------------------------------------------------------------------------
ensure_tools() {
    local pkgs=() t
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v docker-registry >/dev/null || pkgs+=(docker-registry)
    { command -v containerd && command -v ctr; } >/dev/null || pkgs+=(containerd)
    if [ ${#pkgs[@]} -gt 0 ]; then
        echo "# installing ${pkgs[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2; } ||
            { echo "compare.sh: could not install ${pkgs[*]}" >&2; exit 2; }
    fi
    for t in nginx wrk docker-registry containerd ctr curl python3 sha256sum cmp awk; do
        command -v "$t" >/dev/null || { echo "compare.sh: missing $t" >&2; exit 2; }
    done
}
ensure_tools
# the table builder's unit tests, before any service starts
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -q -s "$(dirname "${BASH_SOURCE[0]}")/compare" -p 'test_*.py' ||
    { echo "compare.sh: report.py's unit tests failed" >&2; exit 1; }

# ---- e2e/lib.sh: scratch dir ($E2E_DIR), pid tracking + cleanup trap, upstream, containerd --
UP_PORT=17000 BERTH_PORT=17050 ADMIN_PORT=17051
# shellcheck source=../e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
HERE="$E2E_ROOT/benches/compare"

# Downloads that get hashed land on tmpfs (writing 16 x 256 MiB to disk would time the disk).
SHM=$(mktemp -d /dev/shm/berth-compare.XXXXXX)
bench_cleanup() {
    local rc=$?
    rm -rf "$SHM"
    (exit "$rc")
    e2e_cleanup
}
trap bench_cleanup EXIT

# ---- parameters ----------------------------------------------------------------------------
PROXY_PORT=17100 NGINX_PORT=17200
MEM_PORT=17060 MEM_ADMIN_PORT=17061                   # memory-tier berth
CTD_BERTH_PORT=17070 CTD_ADMIN_PORT=17071 CTD_PROXY_PORT=17110   # fresh mirrors for containerd
MEM_CAP_MIB=1536
CONCURRENT=16
WRK_CONNS=32 WRK_THREADS=2
if [ "$QUICK" = 1 ]; then
    MODE=quick RUNS=2 LAYER_MIB=4 SMALL_IMAGES=10 WRK_SECS=1
    DISK_MAX_OBJ=1MiB      # below the 4 MiB layers, so they stay disk-only as in full mode
else
    MODE=full RUNS=3 LAYER_MIB=256 SMALL_IMAGES=50 WRK_SECS=5
    DISK_MAX_OBJ=64MiB
fi
MEM_MAX_OBJ=512MiB
LAYER_BYTES=$((LAYER_MIB << 20))
[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/berth-compare-$(date +%Y%m%d-%H%M%S).md"
[ -n "$RAW" ] || RAW="${OUT%.md}.jsonl"

# secs T0 T1 (from $EPOCHREALTIME) -> seconds
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
blob_path() { echo "/v2/bench/big/blobs/$1"; }

# ---- the raw file: one JSON object a line (format: compare/report.py) ------------------------
# jstr TEXT -> TEXT as a JSON string (control characters become spaces)
jstr() { local t; t=$(printf '%s' "$1" | tr '\000-\037' ' '); t=${t//\\/\\\\}; printf '"%s"' "${t//\"/\\\"}"; }
# rec FIG SERVICE RUN VALUE UNIT [BYTES]: one measurement; the side is the service name up to
# its first '-' (berth-mem-2 -> berth)
rec() {
    [ -n "$4" ] || return 0
    printf '{"fig":"%s","who":"%s","run":%d,"value":%s,"unit":"%s"%s}\n' \
        "$1" "${2%%-*}" "$3" "$4" "$5" "${6:+,\"bytes\":$6}" >>"$RAW"
}
# meta KEY VALUE...: run parameters, strings
meta() {
    local kv=()
    while [ $# -ge 2 ]; do kv+=("$(jstr "$1"):$(jstr "$2")"); shift 2; done
    local IFS=,; printf '{"meta":{%s}}\n' "${kv[*]}" >>"$RAW"
}

# ---- services (berth, distribution's proxy, peak RSS: compare/services.sh) ----------------
# shellcheck source=compare/services.sh
. "$HERE/services.sh"
# notes and broken checks go to the raw file too (services.sh keeps them in NOTES and BROKEN)
note() { log "note: $*"; NOTES+=("$*"); printf '{"note":%s}\n' "$(jstr "$*")" >>"$RAW"; }
broken() { log "BROKEN: $*"; BROKEN+=("$*"); printf '{"broken":%s}\n' "$(jstr "$*")" >>"$RAW"; }
die() { broken "$*"; log "FATAL: $*; measurements so far in $RAW"; print_broken; exit 1; }
# start_nginx: serves the upstream's blob files (sendfile) on NGINX_PORT
start_nginx() {
    local d="$E2E_DIR/nginx"
    port_is_free "127.0.0.1:$NGINX_PORT" || { log "port $NGINX_PORT busy"; return 1; }
    mkdir -p "$d"
    sed -e "s#@DIR@#$d#g" -e "s#@LISTEN@#127.0.0.1:$NGINX_PORT#g" -e "s#@ROOT@#$E2E_DIR/upstream-data#g" \
        "$HERE/nginx.conf.in" >"$d/nginx.conf"
    nginx -p "$d" -c "$d/nginx.conf" >"$d/nginx.out" 2>&1 &
    PID[nginx]=$!; _track "${PID[nginx]}"
    LOGF[nginx]="$d/error.log"; URL[nginx]="http://127.0.0.1:$NGINX_PORT"
    wait_up nginx "${URL[nginx]}$(blob_path "${BIG_LAYERS[0]}")"
}

# ---- checking what arrived -----------------------------------------------------------------
# get_to URL FILE -> "CODE SIZE" on stdout; curl failures print "curl-exit-N 0"
get_to() { curl -s -m 900 -o "$2" -w '%{http_code} %{size_download}' "$1" || echo " curl-exit-$? 0"; }

# check_blob WHO WHAT "CODE SIZE" [FILE DIGEST]: 200, the layer's size, and (with FILE) its sha256
check_blob() {
    local who=$1 what=$2 code size
    read -r code size <<<"$3"
    [ "$code" = 200 ] || { bad "$who" "$what: status $code"; return 1; }
    [ "$size" = "$LAYER_BYTES" ] || { bad "$who" "$what: $size bytes, want $LAYER_BYTES"; return 1; }
    if [ $# -ge 5 ]; then
        local got; got=$(sha256_of <"$4")
        [ "$got" = "$5" ] || { bad "$who" "$what: sha256 $got, want $5"; return 1; }
    fi
}

# verify_blobs WHO: GET every big layer from WHO and check its sha256 (untimed); only
# verified servers take part in the warm figures
verify_blobs() {
    local who=$1 d got ok=0
    for d in "${BIG_LAYERS[@]}"; do
        got=$(curl -sfS -m 900 "${URL[$who]}$(blob_path "$d")" | sha256_of) || got="curl failed"
        [ "$got" = "$d" ] || { bad "$who" "GET $d: got $got"; ok=1; }
    done
    [ $ok = 0 ] && VERIFIED[$who]=1
    return $ok
}

# berth_mark NAME; berth_tiers NAME MARK: "TIER COUNT" of the blob GETs logged since MARK
berth_mark() { wc -l <"${LOGF[$1]}"; }
berth_tiers() {
    tail -n +"$(($2 + 1))" "${LOGF[$1]}" | sed 's/\x1b\[[0-9;]*m//g' |
        grep -E 'method=GET path=/v2/[^ ]+/blobs/' | grep -oE 'tier="?[a-z-]+' | sed 's/tier="\{0,1\}//' |
        sort | uniq -c | awk '{ printf "%s%s=%s", sep, $2, $1; sep = " " }'
}
# expect_tier NAME MARK TIER N WHAT: exactly N blob GETs since MARK, all answered by TIER
# (the log line is written when the body ends: give it a moment)
expect_tier() {
    local name=$1 mark=$2 tier=$3 n=$4 what=$5 got i
    for ((i = 0; i < 20; i++)); do
        got=$(berth_tiers "$name" "$mark")
        [ "$got" = "$tier=$n" ] && return 0
        sleep 0.1
    done
    broken "$name: $what: want all $n blob GETs from tier $tier, log says: ${got:-nothing}"
    return 1
}

# ---- setup ---------------------------------------------------------------------------------
setup_content() {
    start_upstream || die "upstream distribution did not start ($UP_LOG)"
    log "pushing 4 x $LAYER_MIB MiB layers (bench/big:1) and $SMALL_IMAGES small images"
    local t0=$EPOCHREALTIME
    python3 "$HERE/push.py" "$UP_URL" "$E2E_DIR" "$LAYER_BYTES" 4 "$SMALL_IMAGES" ||
        die "pushing the content to upstream failed"
    # shellcheck source=/dev/null
    . "$E2E_DIR/content.sh"
    URL[upstream]=$UP_URL PID[upstream]=$UP_PID LOGF[upstream]=$UP_LOG
    log "pushed in $(secs "$t0" "$EPOCHREALTIME") s; bench/big:1 = $BIG_MANIFEST"
}

# ---- figures -------------------------------------------------------------------------------
# Each fig_* takes the run index R and the service names of that run's mirrors, and writes a
# raw line per measurement that passed its checks.

# fig_cold_single R BERTH PROXY: cold single GET of layer 0, direct from upstream (reference),
# then through each mirror
fig_cold_single() {
    local r=$1 d=${BIG_LAYERS[0]} who t0 t1 w mark
    mark=$(berth_mark "$2")
    for who in upstream "$2" "$3"; do
        sync    # a cold GET through a mirror writes to disk: start each with no dirty pages
        t0=$EPOCHREALTIME
        w=$(get_to "${URL[$who]}$(blob_path "$d")" "$SHM/cold")
        t1=$EPOCHREALTIME
        check_blob "$who" "cold GET $d" "$w" "$SHM/cold" "$d" &&
            rec cold "$who" "$r" "$(secs "$t0" "$t1")" s "$LAYER_BYTES"
        rm -f "$SHM/cold"
    done
    expect_tier "$2" "$mark" fill-leader 1 "cold GET"
}

# fig_concurrent R WHO: CONCURRENT concurrent GETs of layer 1 (not yet fetched by WHO's
# mirror): upstream GET count + wall. Every client writes to tmpfs; #1 is hashed, the rest
# compared with it. WHO=nginx (warm, page cache) measures what the clients alone cost: the
# floor for this figure on this machine.
fig_concurrent() {
    local r=$1 who=$2 d=${BIG_LAYERS[1]} i t0 t1 before bytes_before after gets pids=() ok=0 mark=
    [ "${who%%-*}" = berth ] && mark=$(berth_mark "$who")
    before=$(count_upstream_blob_gets "$d") bytes_before=$(upstream_blob_bytes "$d")
    sync    # a cold GET writes to disk: do not let earlier writeback pollute it
    t0=$EPOCHREALTIME
    for ((i = 1; i <= CONCURRENT; i++)); do
        get_to "${URL[$who]}$(blob_path "$d")" "$SHM/c$i" >"$SHM/c$i.w" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do wait "${pids[i]}"; done
    t1=$EPOCHREALTIME
    # every client: 200 and the full length; #1 hashed, the others byte-compared with #1
    check_blob "$who" "concurrent GET #1" "$(cat "$SHM/c1.w")" "$SHM/c1" "$d" || ok=1
    for ((i = 2; i <= CONCURRENT; i++)); do
        check_blob "$who" "concurrent GET #$i" "$(cat "$SHM/c$i.w")" || { ok=1; continue; }
        cmp -s "$SHM/c1" "$SHM/c$i" || { bad "$who" "concurrent GET #$i: bytes differ from #1"; ok=1; }
    done
    rm -f "$SHM"/c*
    sleep 0.5   # distribution logs a request when it has ended
    after=$(count_upstream_blob_gets "$d")
    gets=$((after - before))
    [ "$who" = nginx ] || rec conc-gets "$who" "$r" "$gets" gets
    [ $ok = 0 ] && rec conc "$who" "$r" "$(secs "$t0" "$t1")" s $((CONCURRENT * LAYER_BYTES))
    if [ -n "$mark" ]; then
        [ "$gets" = 1 ] || broken "$who: $CONCURRENT concurrent cold GETs of $d reached upstream $gets times"
        # Ranges (a fill's pieces) are not whole fetches, but their bytes count: the blob
        # once, plus what the dropped first GET had in flight.
        local sent=$(($(upstream_blob_bytes "$d") - bytes_before))
        [ "$sent" -le $((LAYER_BYTES + LAYER_BYTES / 10)) ] ||
            broken "$who: upstream sent $sent bytes for $CONCURRENT concurrent cold GETs of a $LAYER_BYTES-byte blob"
        note "upstream bytes for the $CONCURRENT concurrent cold GETs: $sent ($(awk -v s="$sent" -v l="$LAYER_BYTES" 'BEGIN {printf "%.3f", s / l}') of the blob)"
        note "berth tiers for the $CONCURRENT concurrent cold GETs: $(berth_tiers "$who" "$mark")"
    fi
}

# fill_and_verify WHO: GET the layers WHO has not fetched yet (2 and 3), then verify all four
fill_and_verify() {
    local who=$1 d
    for d in "${BIG_LAYERS[@]:2}"; do
        check_blob "$who" "fill GET $d" "$(get_to "${URL[$who]}$(blob_path "$d")" /dev/null)"
    done
    verify_blobs "$who"
}

# warm_seq WHO: the 4 layers one after another on one connection -> R_SECS (empty: failed)
warm_seq() {
    local who=$1 args=() d t0 t1 out line n=0
    R_SECS=
    for d in "${BIG_LAYERS[@]}"; do args+=(-o /dev/null "${URL[$who]}$(blob_path "$d")"); done
    t0=$EPOCHREALTIME
    out=$(curl -s -m 900 -w '%{http_code} %{size_download}\n' "${args[@]}") || { bad "$who" "warm sequential GETs: curl failed"; return 1; }
    t1=$EPOCHREALTIME
    while read -r line; do
        check_blob "$who" "warm sequential GET" "$line" || return 1
        n=$((n + 1))
    done <<<"$out"
    [ $n = 4 ] || { bad "$who" "warm sequential GETs: $n answers"; return 1; }
    R_SECS=$(secs "$t0" "$t1")
}

# warm_par WHO: the 4 layers at once, one curl each -> R_SECS (wall, empty: failed)
warm_par() {
    local who=$1 i t0 t1 pids=()
    R_SECS=
    t0=$EPOCHREALTIME
    for i in 0 1 2 3; do
        get_to "${URL[$who]}$(blob_path "${BIG_LAYERS[i]}")" /dev/null >"$SHM/p$i.w" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do wait "${pids[i]}"; done
    t1=$EPOCHREALTIME
    for i in 0 1 2 3; do check_blob "$who" "warm parallel GET #$i" "$(cat "$SHM/p$i.w")" || return 1; done
    R_SECS=$(secs "$t0" "$t1")
}

# fig_warm TIER R WHO...: sequential, then parallel, on each verified server in turn ->
# warm-TIER-{seq,par}; a berth's figures are kept only when all its GETs were TIER hits.
fig_warm() {
    local tier=$1 r=$2 who kind; shift 2
    declare -A marks=() got=()
    for who in "$@"; do [ "${who%%-*}" = berth ] && marks[$who]=$(berth_mark "$who"); done
    for kind in seq par; do
        for who in "$@"; do
            [ -n "${VERIFIED[$who]:-}" ] || continue
            "warm_$kind" "$who" && got[$kind.$who]=$R_SECS
        done
    done
    for who in "$@"; do
        [ -n "${VERIFIED[$who]:-}" ] || continue
        [ -z "${marks[$who]:-}" ] || expect_tier "$who" "${marks[$who]}" "$tier" 8 "warm GETs" || continue
        for kind in seq par; do
            rec "warm-$tier-$kind" "$who" "$r" "${got[$kind.$who]:-}" s $((4 * LAYER_BYTES))
        done
    done
}

# manifests_ok WHO KIND: every small image's manifest by KIND (tags|digests) from WHO is
# 200 with the bytes of the pushed digest (also warms WHO's cache)
manifests_ok() {
    local who=$1 kind=$2 args=() p n=0 tag dig got ok=0 dir="$SHM/m-$1-$2"
    mkdir -p "$dir"
    while read -r p; do n=$((n + 1)); args+=(-o "$dir/$n" "${URL[$who]}$p"); done <"$E2E_DIR/small-$kind.txt"
    curl -s -m 120 -H "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*" \
        -w '%{http_code}\n' "${args[@]}" >"$dir/codes" || { bad "$who" "manifest GETs ($kind): curl failed"; return 1; }
    if grep -qv '^200$' "$dir/codes"; then bad "$who" "manifest GETs ($kind): statuses $(sort "$dir/codes" | uniq -c | xargs)"; return 1; fi
    n=0
    while read -r tag dig; do
        n=$((n + 1)); got=$(sha256_of <"$dir/$n")
        [ "$got" = "$dig" ] || { bad "$who" "manifest bench/small ($kind #$n): got $got, want $dig"; ok=1; }
    done <"$E2E_DIR/small-expected.txt"
    rm -rf "$dir"
    return $ok
}

# run_wrk R WHO KIND: wrk over the small images' manifests by KIND -> man-KIND, req/s
run_wrk() {
    local r=$1 who=$2 kind=$3 out res
    manifests_ok "$who" "$kind" || return 1
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_SECS}s" -s "$HERE/manifests.lua" \
        "${URL[$who]}" -- "$E2E_DIR/small-$kind.txt" 2>&1)
    echo "$out" >>"$E2E_DIR/wrk.log"
    res=$(grep '^RESULT ' <<<"$out") || { bad "$who" "wrk ($kind) gave no result: $(tail -n 3 <<<"$out" | xargs)"; return 1; }
    local kv; declare -A w=()
    for kv in ${res#RESULT }; do w[${kv%%=*}]=${kv#*=}; done
    if [ "${w[non2xx]}" != 0 ] || [ $((w[connect] + w[read] + w[write] + w[timeout])) != 0 ]; then
        bad "$who" "wrk manifests by $kind: ${w[non2xx]} non-2xx; socket errors: connect ${w[connect]} read ${w[read]} write ${w[write]} timeout ${w[timeout]}"
        return 1
    fi
    rec "man-$kind" "$who" "$r" "$(awk -v n="${w[requests]}" -v us="${w[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')" req/s
}

# fig_manifests R BERTH PROXY: wrk by tag, then by digest, on each mirror and upstream
fig_manifests() {
    local r=$1 kind who
    for kind in tags digests; do
        for who in "$2" "$3" upstream; do run_wrk "$r" "$who" "$kind"; done
    done
}

# rss KIND R WHO: WHO's peak RSS so far -> rss-KIND, MiB
rss() { peak_rss "$3"; rec "rss-$1" "$3" "$2" "${V[rss.$3]:-}" MiB; }

# ctr_fetch PHASE R WHO: a fresh containerd fetches bench/big:1 via hosts.toml pointing at
# WHO -> ctd-PHASE, seconds; checks the content store holds every blob afterwards
ctr_fetch() {
    local phase=$1 r=$2 who=$3 name="$3-$1" certs="$E2E_DIR/certs-$3-$1" t0 t1 have d ok=0
    write_hosts_toml "$certs" docker.io "https://127.0.0.1:9" "${URL[$who]}"
    start_containerd "$name" || die "containerd $name did not start"
    t0=$EPOCHREALTIME
    if ! timeout 900 ctr -a "$CTD_SOCK" -n bench content fetch --hosts-dir "$certs" \
        docker.io/bench/big:1 >"$E2E_DIR/ctd-$name/fetch.log" 2>&1; then
        bad "$who" "ctr content fetch ($phase): $(tail -n 1 "$E2E_DIR/ctd-$name/fetch.log" | xargs)"
    else
        t1=$EPOCHREALTIME
        have=$(ctr -a "$CTD_SOCK" -n bench content ls -q 2>/dev/null)
        for d in "$BIG_MANIFEST" "$BIG_CONFIG" "${BIG_LAYERS[@]}"; do
            grep -qxF "$d" <<<"$have" || { bad "$who" "ctr content fetch ($phase): content store lacks $d"; ok=1; }
        done
        [ $ok = 0 ] && rec "ctd-$phase" "$who" "$r" "$(secs "$t0" "$t1")" s
    fi
    stop_containerd
    rm -rf "$E2E_DIR/ctd-$name/root" "$E2E_DIR/ctd-$name/state"
}

# ---- runs --------------------------------------------------------------------------------
# disk_run R: a fresh berth (big layers on disk only) and a fresh distribution proxy: cold
# single GET, concurrent cold GETs, warm disk-tier GETs, manifests, then each one's peak RSS
disk_run() {
    local r=$1 b=berth-$1 p=proxy-$1
    start_berth_as "$b" "$BERTH_PORT" "$ADMIN_PORT" "$DISK_MAX_OBJ" || die "berth (run $r) did not start"
    start_proxy_as "$p" "$PROXY_PORT" || die "distribution proxy (run $r) did not start"
    fig_cold_single "$r" "$b" "$p"
    fig_concurrent "$r" "$b"
    fig_concurrent "$r" "$p"
    fig_concurrent "$r" nginx
    fill_and_verify "$b"
    fill_and_verify "$p"
    fig_warm disk "$r" "$b" "$p" nginx
    fig_manifests "$r" "$b" "$p"
    rss disk "$r" "$b"; rss disk "$r" "$p"
    stop_service "$b"; stop_service "$p"
}

# memory_run R: a fresh berth that keeps the big layers in memory: filled, verified (all
# memory hits), warm memory-tier GETs beside nginx, peak RSS
memory_run() {
    local r=$1 b=berth-mem-$1 d mark
    start_berth_as "$b" "$MEM_PORT" "$MEM_ADMIN_PORT" "$MEM_MAX_OBJ" || die "memory-tier berth (run $r) did not start"
    for d in "${BIG_LAYERS[@]}"; do
        check_blob "$b" "fill GET $d" "$(get_to "${URL[$b]}$(blob_path "$d")" /dev/null)"
    done
    mark=$(berth_mark "$b")
    verify_blobs "$b" && { expect_tier "$b" "$mark" memory 4 "verifying GETs" || unset "VERIFIED[$b]"; }
    fig_warm memory "$r" "$b" nginx
    rss memory "$r" "$b"
    stop_service "$b"
}

# containerd_run R: fresh mirrors; ctr content fetch through each, cold, then warm, and
# straight from upstream each time; the mirrors' peak RSS
containerd_run() {
    local r=$1 b=berth-ctd-$1 p=proxy-ctd-$1 who
    start_berth_as "$b" "$CTD_BERTH_PORT" "$CTD_ADMIN_PORT" "$DISK_MAX_OBJ" || die "berth (containerd run $r) did not start"
    start_proxy_as "$p" "$CTD_PROXY_PORT" || die "distribution proxy (containerd run $r) did not start"
    sync
    for who in upstream "$b" "$p"; do ctr_fetch cold "$r" "$who"; done
    for who in upstream "$b" "$p"; do ctr_fetch warm "$r" "$who"; done
    rss ctd "$r" "$b"; rss ctd "$r" "$p"
    stop_service "$b"; stop_service "$p"
}

# ---- main ------------------------------------------------------------------------------------
main() {
    local start=$SECONDS r
    : >"$RAW" || die "cannot write $RAW"
    meta mode "$MODE" date "$(date -u +%FT%TZ)" berth_bin "$BERTH_BIN" \
        rev "$(git -C "$E2E_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        cores "$(nproc)" load_start "$(cut -d' ' -f1-3 /proc/loadavg)" \
        layer_mib "$LAYER_MIB" small_images "$SMALL_IMAGES" \
        wrk "-t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s" disk_max_obj "$DISK_MAX_OBJ" mem_max_obj "$MEM_MAX_OBJ"
    printf '{"meta":{"runs":%d,"concurrent":%d,"mem_cap_mib":%d}}\n' "$RUNS" "$CONCURRENT" "$MEM_CAP_MIB" >>"$RAW"
    log "$MODE mode, $RUNS runs; scratch dir $E2E_DIR; berth $BERTH_BIN; raw measurements to $RAW"
    [ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN (set BERTH_BIN)"
    setup_content
    start_nginx || die "nginx did not start (${LOGF[nginx]})"
    verify_blobs nginx || die "nginx does not serve the upstream's blobs"

    for ((r = 1; r <= RUNS; r++)); do
        log "run $r of $RUNS: cold, concurrent, warm disk tier, manifests ($((SECONDS - start))s)"
        disk_run "$r"
    done
    for ((r = 1; r <= RUNS; r++)); do
        log "run $r of $RUNS: memory tier ($((SECONDS - start))s)"
        memory_run "$r"
    done
    for ((r = 1; r <= RUNS; r++)); do
        log "run $r of $RUNS: containerd ($((SECONDS - start))s)"
        containerd_run "$r"
    done
    log "done in $((SECONDS - start))s"
    meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)" seconds "$((SECONDS - start))"

    python3 "$HERE/report.py" "$RAW" --out "$OUT" || broken "report.py could not read $RAW"
    echo
    echo "table written to $OUT; raw measurements in $RAW"
    [ ${#BROKEN[@]} = 0 ]
}

main
