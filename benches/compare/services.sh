# shellcheck shell=bash
# Services and bookkeeping shared by benches/compare.sh and benches/load.sh (sourced after
# e2e/lib.sh): berth and distribution's proxy started fresh, peak RSS, and the list of what
# broke. Needs BERTH_BIN, UP_URL and MEM_CAP_MIB.

# ---- bookkeeping ---------------------------------------------------------------------------
declare -A PID=() LOGF=() URL=()   # per service name: pid, log file, base URL
declare -A V=()                    # measured values, e.g. V[cold.berth.s]
declare -A VERIFIED=()             # servers whose every big layer arrived with the right sha256
BROKEN=() NOTES=()

die() { log "FATAL: $*"; BROKEN+=("$*"); print_broken; exit 1; }
broken() { log "BROKEN: $*"; BROKEN+=("$*"); }
note() { log "note: $*"; NOTES+=("$*"); }
# bad WHO MSG: a failure is broken unless it is distribution's proxy misbehaving (a peer we
# compare against, not something this harness or berth answers for): then it is a note.
bad() { if [ "${1%%-*}" = proxy ]; then note "distribution proxy: $2"; else broken "$1: $2"; fi; }
print_broken() {
    [ ${#BROKEN[@]} = 0 ] && return
    echo "BROKEN (${#BROKEN[@]}):"
    printf '  - %s\n' "${BROKEN[@]}"
}

# ---- services ------------------------------------------------------------------------------
# wait_up NAME URL: until URL answers 200, or the process dies (30 s)
wait_up() {
    local name=$1 url=$2 i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            log "$name exited during startup:"; tail -n 20 "${LOGF[$name]}" | cut -c1-300 >&2
            return 1
        fi
        [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url")" = 200 ] && return 0
        sleep 0.1
    done
    log "$name not answering 200 on $url after 30s"; tail -n 20 "${LOGF[$name]}" | cut -c1-300 >&2
    return 1
}

# start_berth_as NAME PORT ADMIN_PORT MEMORY_MAX_OBJECT: a berth with fresh storage
# (e2e's start_berth writes a fixed small-cache config, so not that one)
start_berth_as() {
    local name=$1 port=$2 admin=$3 max_obj=$4 d="$E2E_DIR/$1"
    [ -x "$BERTH_BIN" ] || { log "no berth binary at $BERTH_BIN (set BERTH_BIN)"; return 1; }
    port_is_free "127.0.0.1:$port" && port_is_free "127.0.0.1:$admin" || { log "port $port or $admin busy"; return 1; }
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/berth.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
default_registry = "docker.io"

[storage]
dir = "$d/data"
memory_capacity = "${MEM_CAP_MIB}MiB"
memory_max_object = "$max_obj"
disk_capacity = "20GiB"

[tags]
ttl = "5m"

[[registry]]
host = "docker.io"
endpoint = "$UP_URL"
EOF
    "$BERTH_BIN" serve --config "$d/berth.toml" >"$d/berth.log" 2>&1 &
    PID[$name]=$!; _track "${PID[$name]}"
    LOGF[$name]="$d/berth.log"; URL[$name]="http://127.0.0.1:$port"
    wait_up "$name" "http://127.0.0.1:$admin/healthz"
}

# start_proxy_as NAME PORT: distribution in pull-through mode, fresh storage
start_proxy_as() {
    local name=$1 port=$2 d="$E2E_DIR/$1"
    port_is_free "127.0.0.1:$port" || { log "port $port busy"; return 1; }
    rm -rf "$d"; mkdir -p "$d"
    cat >"$d/proxy.yml" <<EOF
version: 0.1
storage:
  filesystem: { rootdirectory: $d/data }
http:
  addr: 127.0.0.1:$port
  secret: berth-bench-proxy
log: { level: warn }
proxy: { remoteurl: $UP_URL }
EOF
    docker-registry serve "$d/proxy.yml" >"$d/proxy.log" 2>&1 &
    PID[$name]=$!; _track "${PID[$name]}"
    LOGF[$name]="$d/proxy.log"; URL[$name]="http://127.0.0.1:$port"
    wait_up "$name" "http://127.0.0.1:$port/v2/"
}

stop_service() { stop_pid "${PID[$1]}" 20; }

# peak_rss NAME: VmHWM of a running service in MiB, into V[rss.NAME]
peak_rss() {
    V[rss.$1]=$(awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/${PID[$1]}/status" 2>/dev/null)
    [ -n "${V[rss.$1]}" ] || bad "$1" "not running when its peak RSS was read"
}
