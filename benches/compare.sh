#!/usr/bin/env bash
# Side-by-side benchmark: berth vs distribution in proxy mode vs the references (distribution
# itself as the direct upstream, nginx serving the upstream's blob files with sendfile), all
# on this machine's loopback, with real clients (curl, wrk, ctr) doing the timing.
#
#   benches/compare.sh [--quick] [--out FILE]
#   BERTH_BIN=/path/to/berth benches/compare.sh      # default: target/release/berth
#   E2E_KEEP=1 benches/compare.sh                    # keep the scratch dir (all logs)
#
# Prints one markdown table (figures, ratios, targets, met?) and writes it, with the notes, to
# FILE (default ${TMPDIR:-/tmp}/berth-compare-<time>.md). Exits non-zero only when something is
# broken: a service did not start, a transfer failed or delivered wrong bytes, a berth GET was
# not answered by the tier a figure claims, or berth fetched a blob from upstream more than
# once. A missed timing target never fails the run. Needs root (containerd; nginx runs as
# root to read the 0700 scratch dir). Ports 17000-17999.
#
# --quick: 4 x 4 MiB layers, 10 small images, 2 s wrk runs, one repetition: checks that the
# harness works (CI), figures mean little. Full mode: 4 x 256 MiB layers, 50 small images,
# 10 s wrk runs, warm figures are the best of 3.
#
# Helpers in benches/compare/: push.py (generates and pushes the content), manifests.lua
# (wrk: rotating manifest GETs, counts non-2xx), nginx.conf.in. Process start/stop, the
# scratch dir, the cleanup trap and containerd come from e2e/lib.sh.
set -u -o pipefail

QUICK=0 OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
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
    MODE=quick LAYER_MIB=4 SMALL_IMAGES=10 WRK_SECS=2 REPS=1 CTD_REPS=1
    DISK_MAX_OBJ=1MiB      # below the 4 MiB layers, so they stay disk-only as in full mode
else
    MODE=full LAYER_MIB=256 SMALL_IMAGES=50 WRK_SECS=10 REPS=3 CTD_REPS=2
    DISK_MAX_OBJ=64MiB
fi
MEM_MAX_OBJ=512MiB
LAYER_BYTES=$((LAYER_MIB << 20))
[ -n "$OUT" ] || OUT="${TMPDIR:-/tmp}/berth-compare-$(date +%Y%m%d-%H%M%S).md"

# secs T0 T1 (from $EPOCHREALTIME) -> seconds; gbps BYTES SECS -> GB/s (10^9 bytes)
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
s3() { [ -z "$1" ] || printf '%.3f' "$1"; }   # seconds as shown in the table
gbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.2f", n / s / 1e9 }'; }
blob_path() { echo "/v2/bench/big/blobs/$1"; }

# ---- services (berth, distribution's proxy, peak RSS: compare/services.sh) ----------------
# shellcheck source=compare/services.sh
. "$HERE/services.sh"
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
# Cold single GET of layer 0: direct from upstream (reference), then through each mirror.
fig_cold_single() {
    local d=${BIG_LAYERS[0]} who t0 t1 w mark
    mark=$(berth_mark berth)
    for who in upstream berth proxy; do
        local base=${URL[$who]:-$UP_URL}
        sync    # a cold GET through a mirror writes to disk: start each with no dirty pages
        t0=$EPOCHREALTIME
        w=$(get_to "$base$(blob_path "$d")" "$SHM/cold")
        t1=$EPOCHREALTIME
        if check_blob "$who" "cold GET $d" "$w" "$SHM/cold" "$d"; then
            V[cold.$who.s]=$(secs "$t0" "$t1")
            V[cold.$who.gbps]=$(gbps "$LAYER_BYTES" "${V[cold.$who.s]}")
        fi
        rm -f "$SHM/cold"
    done
    expect_tier berth "$mark" fill-leader 1 "cold GET"
}

# 16 concurrent GETs of layer 1 (not yet fetched by either mirror): upstream GET count + wall.
# Every client writes to tmpfs; #1 is hashed, the rest compared with it. WHO=nginx (warm,
# page cache) measures what the clients alone cost: the floor for this figure on this machine.
fig_concurrent() {
    local who=$1 d=${BIG_LAYERS[1]} i t0 t1 before after pids=() ok=0 mark=
    [ "$who" = berth ] && mark=$(berth_mark berth)
    before=$(count_upstream_blob_gets "$d")
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
    [ "$who" = nginx ] || V[conc.$who.gets]=$((after - before))
    [ $ok = 0 ] && V[conc.$who.s]=$(secs "$t0" "$t1")
    if [ "$who" = berth ]; then
        [ "${V[conc.berth.gets]}" = 1 ] ||
            broken "berth: $CONCURRENT concurrent cold GETs of $d reached upstream ${V[conc.berth.gets]} times"
        note "berth tiers for the $CONCURRENT concurrent cold GETs: $(berth_tiers berth "$mark")"
    fi
}

# fill WHO: GET the layers WHO has not fetched yet (2 and 3), then verify all four (sha256)
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

# fig_warm TIER WHO...: REPS rounds of (sequential, parallel) per server, interleaved; keeps
# the best GB/s of each in V[warm.TIER.{seq,par}.WHO]. berth's GETs must all be TIER hits.
fig_warm() {
    local tier=$1 who rep kind best; shift
    declare -A marks=()
    for who in "$@"; do [ "${who%%-*}" = berth ] && marks[$who]=$(berth_mark "$who"); done
    for ((rep = 1; rep <= REPS; rep++)); do
        for kind in seq par; do
            for who in "$@"; do
                [ -n "${VERIFIED[$who]:-}" ] || continue
                "warm_$kind" "$who" || continue
                local g; g=$(gbps $((4 * LAYER_BYTES)) "$R_SECS")
                best=${V[warm.$tier.$kind.$who]:-0}
                V[warm.$tier.$kind.$who]=$(awk -v a="$g" -v b="$best" 'BEGIN { print (a > b) ? a : b }')
            done
        done
    done
    for who in "${!marks[@]}"; do
        [ -n "${VERIFIED[$who]:-}" ] || continue
        expect_tier "$who" "${marks[$who]}" "$tier" $((REPS * 8)) "warm GETs" ||
            { unset "V[warm.$tier.seq.$who]" "V[warm.$tier.par.$who]"; }
    done
}

# manifests_ok WHO KIND: every small image's manifest by KIND (tags|digests) from WHO is
# 200 with the bytes of the pushed digest (also warms WHO's cache)
manifests_ok() {
    local who=$1 kind=$2 args=() p n=0 tag dig got ok=0 dir="$SHM/m-$1-$2"
    mkdir -p "$dir"
    while read -r p; do n=$((n + 1)); args+=(-o "$dir/$n" "${URL[$who]:-$UP_URL}$p"); done <"$E2E_DIR/small-$kind.txt"
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

# run_wrk WHO KIND: wrk over the small images' manifests by KIND -> V[man.KIND.WHO] req/s
run_wrk() {
    local who=$1 kind=$2 out res
    manifests_ok "$who" "$kind" || return 1
    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WRK_SECS}s" -s "$HERE/manifests.lua" \
        "${URL[$who]:-$UP_URL}" -- "$E2E_DIR/small-$kind.txt" 2>&1)
    echo "$out" >>"$E2E_DIR/wrk.log"
    res=$(grep '^RESULT ' <<<"$out") || { bad "$who" "wrk ($kind) gave no result: $(tail -n 3 <<<"$out" | xargs)"; return 1; }
    local kv; declare -A w=()
    for kv in ${res#RESULT }; do w[${kv%%=*}]=${kv#*=}; done
    if [ "${w[non2xx]}" != 0 ] || [ $((w[connect] + w[read] + w[write] + w[timeout])) != 0 ]; then
        bad "$who" "wrk manifests by $kind: ${w[non2xx]} non-2xx; socket errors: connect ${w[connect]} read ${w[read]} write ${w[write]} timeout ${w[timeout]}"
        return 1
    fi
    V[man.$kind.$who]=$(awk -v n="${w[requests]}" -v us="${w[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
}

fig_manifests() {
    local kind who
    for kind in tags digests; do
        for who in berth proxy upstream; do run_wrk "$who" "$kind"; done
    done
}

# ctr_fetch NAME MIRROR_URL: a fresh containerd fetches bench/big:1 via hosts.toml pointing at
# MIRROR_URL -> V[ctd.NAME] seconds; checks the content store holds every blob afterwards
ctr_fetch() {
    local name=$1 mirror=$2 who=${1%-*} certs="$E2E_DIR/certs-$1" t0 t1 have d
    write_hosts_toml "$certs" docker.io "https://127.0.0.1:9" "$mirror"
    start_containerd "$name" || die "containerd $name did not start"
    t0=$EPOCHREALTIME
    if ! timeout 900 ctr -a "$CTD_SOCK" -n bench content fetch --hosts-dir "$certs" \
        docker.io/bench/big:1 >"$E2E_DIR/ctd-$name/fetch.log" 2>&1; then
        bad "$who" "ctr content fetch ($name): $(tail -n 1 "$E2E_DIR/ctd-$name/fetch.log" | xargs)"
    else
        t1=$EPOCHREALTIME
        have=$(ctr -a "$CTD_SOCK" -n bench content ls -q 2>/dev/null)
        local ok=0
        for d in "$BIG_MANIFEST" "$BIG_CONFIG" "${BIG_LAYERS[@]}"; do
            grep -qxF "$d" <<<"$have" || { bad "$who" "ctr content fetch ($name): content store lacks $d"; ok=1; }
        done
        [ $ok = 0 ] && V[ctd.$name]=$(secs "$t0" "$t1")
    fi
    stop_containerd
    rm -rf "$E2E_DIR/ctd-$name/root" "$E2E_DIR/ctd-$name/state"
}

# containerd through fresh mirrors (cold, then warm), and straight from upstream
fig_containerd() {
    start_berth_as berth-ctd "$CTD_BERTH_PORT" "$CTD_ADMIN_PORT" "$DISK_MAX_OBJ" || die "berth (containerd run) did not start"
    start_proxy_as proxy-ctd "$CTD_PROXY_PORT" || die "distribution proxy (containerd run) did not start"
    local rep who
    sync
    ctr_fetch upstream-cold "$UP_URL"
    ctr_fetch berth-cold "${URL[berth-ctd]}"
    ctr_fetch proxy-cold "${URL[proxy-ctd]}"
    # warm: best of CTD_REPS, interleaved (containerd itself is the bottleneck and noisy)
    for ((rep = 1; rep <= CTD_REPS; rep++)); do
        for who in upstream berth proxy; do
            unset "V[ctd.$who-warm]"
            ctr_fetch "$who-warm" "${URL[$who-ctd]:-$UP_URL}"
            [ -n "${V[ctd.$who-warm]:-}" ] || continue
            V[ctd.$who-warm.best]=$(awk -v a="${V[ctd.$who-warm]}" -v b="${V[ctd.$who-warm.best]:-1e9}" 'BEGIN { print (a < b) ? a : b }')
        done
    done
    peak_rss berth-ctd; peak_rss proxy-ctd
    stop_service berth-ctd; stop_service proxy-ctd
}

# ---- the table -----------------------------------------------------------------------------
ROWS=()
# ratio A B -> "A/B" to 2 decimals, or "-" when either is missing
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || echo -; }
# met OP LIMIT VALUE -> yes / no / n/a
met() {
    [ -n "$3" ] && [ "$3" != - ] || { echo n/a; return; }
    awk -v v="$3" -v l="$2" -v op="$1" 'BEGIN { ok = (op == ">=") ? v >= l : (op == "<=") ? v <= l : v == l; print ok ? "yes" : "no" }'
}
both() { case "$1 $2" in *n/a*) echo n/a ;; "yes yes") echo yes ;; *) echo no ;; esac; }
# row FIGURE BERTH PROXY REF RATIO TARGET MET
row() { ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s | %s |' "$1" "${2:--}" "${3:--}" "${4:--}" "${5:--}" "$6" "$7")"); }

build_rows() {
    local r r2 m m2
    r=$(ratio "${V[cold.berth.gbps]:-}" "${V[cold.upstream.gbps]:-}")
    row "cold single GET, GB/s (ref: direct upstream)" "${V[cold.berth.gbps]:-}" "${V[cold.proxy.gbps]:-}" \
        "${V[cold.upstream.gbps]:-}" "$r" "≥ 0.9x" "$(met '>=' 0.9 "$r")"
    local tier kind label
    for tier in disk memory; do
        for kind in seq par; do
            label="warm GET, $tier tier, $([ $kind = seq ] && echo "sequential 4 layers" || echo "4 parallel, aggregate"), GB/s (ref: nginx)"
            local b=${V[warm.$tier.$kind.berth]:-}
            [ "$tier" = memory ] && b=${V[warm.$tier.$kind.berth-mem]:-}
            local p=${V[warm.$tier.$kind.proxy]:-}
            [ "$tier" = memory ] && p="(no memory tier)"
            r=$(ratio "$b" "${V[warm.$tier.$kind.nginx]:-}")
            row "$label" "$b" "$p" "${V[warm.$tier.$kind.nginx]:-}" "$r" "≥ 1.0x" "$(met '>=' 1.0 "$r")"
        done
    done
    row "$CONCURRENT concurrent cold GETs of one layer: upstream GETs of it" "${V[conc.berth.gets]:-}" \
        "${V[conc.proxy.gets]:-}" 1 - "exactly 1" "$(met '==' 1 "${V[conc.berth.gets]:-}")"
    r=$(ratio "${V[conc.berth.s]:-}" "${V[cold.berth.s]:-}")
    row "$CONCURRENT concurrent cold GETs of one layer: wall s (ref: one cold GET via berth)" "$(s3 "${V[conc.berth.s]:-}")" \
        "$(s3 "${V[conc.proxy.s]:-}")" "$(s3 "${V[cold.berth.s]:-}")" "$r" "≤ 1.3x" "$(met '<=' 1.3 "$r")"
    r=$(ratio "${V[man.tags.berth]:-}" "${V[man.tags.upstream]:-}")
    r2=$(ratio "${V[man.tags.berth]:-}" "${V[man.tags.proxy]:-}")
    m=$(met '>=' 2 "$r"); m2=$(met '>=' 10 "$r2")
    row "manifest by tag, req/s (ref: direct upstream)" "${V[man.tags.berth]:-}" "${V[man.tags.proxy]:-}" \
        "${V[man.tags.upstream]:-}" "$r" "≥ 2x ref; ≥ 10x proxy (got ${r2}x)" "$(both "$m" "$m2")"
    r=$(ratio "${V[man.digests.berth]:-}" "${V[man.digests.upstream]:-}")
    row "manifest by digest, req/s (ref: direct upstream)" "${V[man.digests.berth]:-}" "${V[man.digests.proxy]:-}" \
        "${V[man.digests.upstream]:-}" "$r" "-" "-"
    local lim=$((MEM_CAP_MIB + 64)) rb
    rb=$(printf '%s\n' "${V[rss.berth]:-}" "${V[rss.berth-ctd]:-}" | sort -n | tail -n1)
    r=$(ratio "$rb" "$MEM_CAP_MIB")
    row "peak RSS MiB, berth memory_max_object=$DISK_MAX_OBJ (ref: memory_capacity)" "$rb" \
        "$(printf '%s\n' "${V[rss.proxy]:-}" "${V[rss.proxy-ctd]:-}" | sort -n | tail -n1)" "$MEM_CAP_MIB" "$r" \
        "≤ $lim MiB" "$(met '<=' "$lim" "$rb")"
    r=$(ratio "${V[rss.berth-mem]:-}" "$MEM_CAP_MIB")
    row "peak RSS MiB, berth memory_max_object=$MEM_MAX_OBJ (ref: memory_capacity)" "${V[rss.berth-mem]:-}" "" \
        "$MEM_CAP_MIB" "$r" "≤ $lim MiB" "$(met '<=' "$lim" "${V[rss.berth-mem]:-}")"
    r=$(ratio "${V[ctd.berth-cold]:-}" "${V[ctd.upstream-cold]:-}")
    row "ctr content fetch bench/big:1, cold, s (ref: direct upstream)" "$(s3 "${V[ctd.berth-cold]:-}")" \
        "$(s3 "${V[ctd.proxy-cold]:-}")" "$(s3 "${V[ctd.upstream-cold]:-}")" "$r" "-" "-"
    r=$(ratio "${V[ctd.berth-warm.best]:-}" "${V[ctd.upstream-warm.best]:-}")
    row "ctr content fetch bench/big:1, warm (best of $CTD_REPS), s (ref: direct upstream)" "$(s3 "${V[ctd.berth-warm.best]:-}")" \
        "$(s3 "${V[ctd.proxy-warm.best]:-}")" "$(s3 "${V[ctd.upstream-warm.best]:-}")" "$r" "≤ 1.05x" "$(met '<=' 1.05 "$r")"
}

# report: the table, met/missed per target, notes, broken; to stdout and $OUT
report() {
    build_rows
    local rev; rev=$(git -C "$E2E_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
    {
        echo "# berth compare ($MODE mode), $(date -u +%FT%TZ)"
        echo
        echo "berth: \`$BERTH_BIN\` (repo HEAD $rev); $(nproc) cores; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)."
        echo "Layers: 4 x $LAYER_MIB MiB random bytes; $SMALL_IMAGES small images; wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s;" \
            "warm figures best of $REPS; GB = 10^9 bytes; memory_capacity ${MEM_CAP_MIB}MiB."
        echo
        echo "| figure | berth | distr. proxy | reference | berth/ref | target | met? |"
        echo "|---|---|---|---|---|---|---|"
        printf '%s\n' "${ROWS[@]}"
        echo
        local line fig met
        echo "Targets:"
        for line in "${ROWS[@]}"; do
            fig=$(awk -F' [|] ' '{ print $1 }' <<<"${line#| }")
            met=$(awk -F' [|] ' '{ print $7 }' <<<"${line#| }" | sed 's/ |$//')
            case $met in
                yes) echo "- met: $fig" ;;
                no) echo "- MISSED: $fig" ;;
                n/a) echo "- not measured (see broken/notes): $fig" ;;
            esac
        done
        if [ ${#NOTES[@]} -gt 0 ]; then echo; echo "Notes:"; printf -- '- %s\n' "${NOTES[@]}"; fi
        if [ ${#BROKEN[@]} -gt 0 ]; then echo; echo "BROKEN:"; printf -- '- %s\n' "${BROKEN[@]}"; fi
    } | tee "$OUT"
    echo
    echo "table written to $OUT"
}

# ---- main ------------------------------------------------------------------------------------
main() {
    local start=$SECONDS
    LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
    log "$MODE mode; scratch dir $E2E_DIR; berth $BERTH_BIN"
    [ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN (set BERTH_BIN)"
    setup_content
    start_nginx || die "nginx did not start (${LOGF[nginx]})"
    start_berth_as berth "$BERTH_PORT" "$ADMIN_PORT" "$DISK_MAX_OBJ" || die "berth did not start"
    start_proxy_as proxy "$PROXY_PORT" || die "distribution proxy did not start"
    verify_blobs nginx || die "nginx does not serve the upstream's blobs"

    log "cold single GET ($((SECONDS - start))s)"
    fig_cold_single
    log "$CONCURRENT concurrent cold GETs ($((SECONDS - start))s)"
    fig_concurrent berth
    fig_concurrent proxy
    fig_concurrent nginx
    note "client floor for the $CONCURRENT-concurrent figure: nginx serving that blob warm (page cache, sendfile) to the same $CONCURRENT curl clients took $(s3 "${V[conc.nginx.s]:-}") s"
    log "filling and verifying the disk tier ($((SECONDS - start))s)"
    fill_and_verify berth
    fill_and_verify proxy
    log "warm GETs, disk tier ($((SECONDS - start))s)"
    fig_warm disk berth proxy nginx
    log "manifests ($((SECONDS - start))s)"
    fig_manifests
    peak_rss berth; peak_rss proxy
    stop_service berth; stop_service proxy

    log "memory tier ($((SECONDS - start))s)"
    start_berth_as berth-mem "$MEM_PORT" "$MEM_ADMIN_PORT" "$MEM_MAX_OBJ" || die "memory-tier berth did not start"
    local d mark
    for d in "${BIG_LAYERS[@]}"; do
        check_blob berth-mem "fill GET $d" "$(get_to "${URL[berth-mem]}$(blob_path "$d")" /dev/null)"
    done
    mark=$(berth_mark berth-mem)
    verify_blobs berth-mem && expect_tier berth-mem "$mark" memory 4 "verifying GETs"
    fig_warm memory berth-mem nginx
    peak_rss berth-mem
    stop_service berth-mem

    log "containerd ($((SECONDS - start))s)"
    fig_containerd
    log "done in $((SECONDS - start))s"
    report
    [ ${#BROKEN[@]} = 0 ]
}

main
