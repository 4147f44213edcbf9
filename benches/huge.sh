#!/usr/bin/env bash
# A huge layer: one image with a 4 GiB random layer, fetched by containerd (`ctr content
# fetch`, cold) through berth and, side by side, through distribution's proxy. Prints the
# time and each server's peak RSS, split into anonymous memory (heap and buffers: what must
# stay bounded) and file-backed pages (berth serves from a read-only mapping of the blob
# file; those are page cache the kernel can drop).
#
#   sudo benches/huge.sh [--mib N]        # default 4096; needs ~5 x N MiB of free disk
#   BERTH_BIN=/path/to/berth benches/huge.sh
#
# Exits non-zero when a fetch fails or the content is not all in containerd's store. Needs
# root (containerd). Ports 17500-17599.
set -u -o pipefail

MIB=4096
while [ $# -gt 0 ]; do
    case $1 in
        --mib) MIB=${2:?--mib needs a size}; shift ;;
        -h | --help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "huge.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

UP_PORT=17500 BERTH_PORT=17550 ADMIN_PORT=17551
# shellcheck source=../e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"
HERE="$E2E_ROOT/benches/compare"
MEM_CAP_MIB=512
# shellcheck source=compare/services.sh
. "$HERE/services.sh"
PROXY_PORT=17560

# watch_rss NAME FILE: until stopped, the largest RssAnon and RssFile (KiB) seen, every 0.2 s
watch_rss() {
    local pid=${PID[$1]} anon=0 file=0 a f
    while kill -0 "$pid" 2>/dev/null; do
        read -r a f < <(awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { print a + 0, f + 0 }' "/proc/$pid/status" 2>/dev/null)
        [ "${a:-0}" -gt "$anon" ] && anon=$a
        [ "${f:-0}" -gt "$file" ] && file=$f
        echo "$anon $file" >"$2"
        sleep 0.2
    done
}

# fetch_via WHO: ctr content fetch of bench/big:1 through WHO; fills V[huge.WHO.*]
fetch_via() {
    local who=$1 certs="$E2E_DIR/certs-$1" watcher t0 t1 have d
    write_hosts_toml "$certs" docker.io "https://127.0.0.1:9" "${URL[$who]}"
    start_containerd "$who" || die "containerd did not start"
    watch_rss "$who" "$E2E_DIR/rss-$who" &
    watcher=$!
    t0=$EPOCHREALTIME
    if timeout 1800 ctr -a "$CTD_SOCK" -n bench content fetch --hosts-dir "$certs" docker.io/bench/big:1 \
        >"$E2E_DIR/fetch-$who.log" 2>&1; then
        t1=$EPOCHREALTIME
        V[huge.$who.s]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        have=$(ctr -a "$CTD_SOCK" -n bench content ls -q 2>/dev/null)
        for d in "$BIG_MANIFEST" "$BIG_CONFIG" "${BIG_LAYERS[@]}"; do
            grep -qxF "$d" <<<"$have" || bad "$who" "containerd's store lacks $d"
        done
    else
        bad "$who" "ctr content fetch failed: $(tail -n 1 "$E2E_DIR/fetch-$who.log")"
    fi
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
    local anon file
    read -r anon file <"$E2E_DIR/rss-$who"
    V[huge.$who.anon]=$((anon / 1024)) V[huge.$who.file]=$((file / 1024))
    V[huge.$who.hwm]=$(awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/${PID[$who]}/status")
    stop_containerd
    rm -rf "$E2E_DIR/ctd-$who"
    stop_service "$who"
    rm -rf "$E2E_DIR/$who/data"
    log "$who: ${V[huge.$who.s]:-?} s, peak RSS ${V[huge.$who.hwm]} MiB (anonymous ${V[huge.$who.anon]}, file-backed ${V[huge.$who.file]})"
}

main() {
    log "one ${MIB} MiB layer; scratch dir $E2E_DIR"
    [ -x "$BERTH_BIN" ] || die "no berth binary at $BERTH_BIN (set BERTH_BIN)"
    start_upstream || die "upstream distribution did not start ($UP_LOG)"
    python3 "$HERE/push.py" "$UP_URL" "$E2E_DIR" $((MIB << 20)) 1 0 || die "pushing the layer failed"
    # shellcheck source=/dev/null
    . "$E2E_DIR/content.sh"
    sync
    start_berth_as berth "$BERTH_PORT" "$ADMIN_PORT" 64MiB || die "berth did not start"
    fetch_via berth
    start_proxy_as proxy "$PROXY_PORT" || die "distribution proxy did not start"
    fetch_via proxy
    echo "| ${MIB} MiB layer, ctr content fetch, cold | berth | distribution proxy |"
    echo "|---|---|---|"
    echo "| seconds | ${V[huge.berth.s]:-} | ${V[huge.proxy.s]:-} |"
    echo "| peak RSS, MiB (VmHWM) | ${V[huge.berth.hwm]:-} | ${V[huge.proxy.hwm]:-} |"
    echo "| peak anonymous RSS, MiB | ${V[huge.berth.anon]:-} | ${V[huge.proxy.anon]:-} |"
    echo "| peak file-backed RSS, MiB | ${V[huge.berth.file]:-} | ${V[huge.proxy.file]:-} |"
    print_broken
    [ ${#BROKEN[@]} = 0 ]
}

main
