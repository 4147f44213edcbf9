# shellcheck shell=bash
# Helpers for berth's end-to-end tests. Source this file; do not execute it.
#
# Every process started here is recorded by pid and stopped by the EXIT trap
# (also on failure or Ctrl-C); the scratch dir is removed unless E2E_KEEP=1.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
E2E_SRC="$E2E_ROOT/e2e"

# ---- ports (15000-15999) ----------------------------------------------------
UP_PORT=${UP_PORT:-15000}          # upstream distribution
BERTH_PORT=${BERTH_PORT:-15050}    # berth registry API
ADMIN_PORT=${ADMIN_PORT:-15051}    # berth admin (/healthz)
UP_ADDR="127.0.0.1:$UP_PORT"
BERTH_ADDR="127.0.0.1:$BERTH_PORT"
ADMIN_ADDR="127.0.0.1:$ADMIN_PORT"
UP_URL="http://$UP_ADDR"
BERTH_URL="http://$BERTH_ADDR"

# berth (default) or distribution (a distribution in proxy mode stands in for
# berth on the same port: a dry run of the suite without berth's binary).
E2E_MIRROR=${E2E_MIRROR:-berth}
BERTH_BIN=${BERTH_BIN:-$E2E_ROOT/target/release/berth}
case "$BERTH_BIN" in /*) ;; *) BERTH_BIN="$E2E_ROOT/$BERTH_BIN" ;; esac

# ---- scratch dir + cleanup ---------------------------------------------------
E2E_DIR=$(mktemp -d "${TMPDIR:-/tmp}/berth-e2e.XXXXXX")
E2E_PIDS=()      # every pid we started, in start order
UP_PID= BERTH_PID= DOCKERD_PID=
UP_LOG="$E2E_DIR/upstream.log"
BERTH_LOG="$E2E_DIR/berth.log"

log() { printf '# %s\n' "$*" >&2; }

_track() { E2E_PIDS+=("$1"); }

# stop_pid PID [GRACE_SECONDS]: TERM, wait, then KILL. Also stops the
# process's direct children (dockerd's own containerd) by pid.
stop_pid() {
    local pid=$1 grace=${2:-15} kids i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop after ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        if kill -0 "$k" 2>/dev/null; then
            kill -TERM "$k" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$k" 2>/dev/null || true
        fi
    done
}

e2e_cleanup() {
    local rc=$? i m
    trap - EXIT INT TERM
    for ((i = ${#E2E_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${E2E_PIDS[i]}" 10
    done
    # containerd's overlay snapshotter / dockerd may leave mounts behind
    if [ -d "$E2E_DIR" ]; then
        awk -v d="$E2E_DIR" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        if [ "${E2E_KEEP:-0}" = 1 ]; then
            log "kept scratch dir $E2E_DIR"
        else
            rm -rf "$E2E_DIR"
        fi
    fi
    exit "$rc"
}
trap e2e_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- waiting -----------------------------------------------------------------
# wait_for_port HOST:PORT [TIMEOUT]
wait_for_port() {
    local addr=$1 t=${2:-30} i
    for ((i = 0; i < t * 10; i++)); do
        (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    log "timeout waiting for port $addr"
    return 1
}

port_is_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# wait_for_socket PATH [TIMEOUT]
wait_for_socket() {
    local s=$1 t=${2:-30} i
    for ((i = 0; i < t * 10; i++)); do
        [ -S "$s" ] && return 0
        sleep 0.1
    done
    log "timeout waiting for socket $s"
    return 1
}

# wait_for_http URL [TIMEOUT] [EXPECTED_STATUS]
wait_for_http() {
    local url=$1 t=${2:-30} want=${3:-200} i code
    for ((i = 0; i < t * 5; i++)); do
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) || true
        [ "$code" = "$want" ] && return 0
        sleep 0.2
    done
    log "timeout waiting for $url to answer $want (last: $code)"
    return 1
}

# ---- upstream: distribution ----------------------------------------------------
start_upstream() {
    port_is_free "$UP_ADDR" || { log "port $UP_ADDR is busy"; return 1; }
    cat >"$E2E_DIR/upstream.yml" <<EOF
version: 0.1
storage:
  filesystem: { rootdirectory: $E2E_DIR/upstream-data }
  delete: { enabled: true }
http:
  addr: $UP_ADDR
  secret: berth-e2e-upstream
log: { level: warn }
EOF
    # distribution 2.8 prints its access log on stdout, its own log on stderr:
    # keep both in one file (appended to across restarts).
    docker-registry serve "$E2E_DIR/upstream.yml" >>"$UP_LOG" 2>&1 &
    UP_PID=$!
    _track "$UP_PID"
    wait_for_http "$UP_URL/v2/" 30
}

stop_upstream() { stop_pid "$UP_PID"; UP_PID=; }

# count_upstream_blob_gets DIGEST: how many whole fetches of that blob reached upstream:
# GETs (any repository) answered with anything but 206. Ranges are not counted: the pieces
# of a fill over several connections, a resume, a range fetched ahead. HEADs are not counted.
count_upstream_blob_gets() {
    grep -E "\"GET /v2/[^ \"]+/blobs/$1[ ?]" "$UP_LOG" 2>/dev/null | grep -cvE '" 206 ' || true
}

# upstream_blob_bytes DIGEST: the bytes upstream sent for GETs of that blob, ranges included.
upstream_blob_bytes() {
    grep -E "\"GET /v2/[^ \"]+/blobs/$1[ ?]" "$UP_LOG" 2>/dev/null |
        awk '{for (i = 1; i < NF; i++) if ($i ~ /^HTTP\//) {s += $(i + 2); break}} END {printf "%.0f", s}'
}

# ---- the mirror: berth (or distribution in proxy mode) -------------------------
# BERTH_DATA, BERTH_DISK_CAPACITY, BERTH_TAG_TTL and BERTH_EXTRA_TOML (appended tables)
# change the config for scenarios that need another berth.
write_berth_config() {
    cat >"$E2E_DIR/berth.toml" <<EOF
[server]
listen = "$BERTH_ADDR"
admin_listen = "$ADMIN_ADDR"
default_registry = "docker.io"

[storage]
dir = "${BERTH_DATA:-$E2E_DIR/berth-data}"
memory_capacity = "64MiB"
memory_max_object = "8MiB"
disk_capacity = "${BERTH_DISK_CAPACITY:-2GiB}"

[tags]
ttl = "${BERTH_TAG_TTL:-5m}"

[[registry]]
host = "docker.io"
endpoint = "$UP_URL"

[[registry]]
host = "registry.test"
endpoint = "$UP_URL"

${BERTH_EXTRA_TOML:-}
EOF
}

start_berth() {
    port_is_free "$BERTH_ADDR" || { log "port $BERTH_ADDR is busy"; return 1; }
    if [ "$E2E_MIRROR" = distribution ]; then
        cat >"$E2E_DIR/mirror.yml" <<EOF
version: 0.1
storage:
  filesystem: { rootdirectory: $E2E_DIR/berth-data }
http:
  addr: $BERTH_ADDR
  secret: berth-e2e-mirror
log: { level: warn }
proxy: { remoteurl: $UP_URL }
EOF
        echo "=== start distribution proxy $(date -u +%FT%TZ)" >>"$BERTH_LOG"
        docker-registry serve "$E2E_DIR/mirror.yml" >>"$BERTH_LOG" 2>&1 &
        BERTH_PID=$!
        _track "$BERTH_PID"
        _wait_mirror "$BERTH_URL/v2/"
        return
    fi
    [ -x "$BERTH_BIN" ] || { log "no berth binary at $BERTH_BIN (set BERTH_BIN)"; return 1; }
    write_berth_config
    echo "=== start berth $(date -u +%FT%TZ)" >>"$BERTH_LOG"
    "$BERTH_BIN" serve --config "$E2E_DIR/berth.toml" >>"$BERTH_LOG" 2>&1 &
    BERTH_PID=$!
    _track "$BERTH_PID"
    _wait_mirror "http://$ADMIN_ADDR/healthz"
}

# _wait_mirror URL: until URL answers 200, or the mirror process dies (30 s)
_wait_mirror() {
    local i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$BERTH_PID" 2>/dev/null; then
            log "mirror exited during startup:"; tail -n 20 "$BERTH_LOG" | cut -c1-300 >&2
            BERTH_PID=; return 1
        fi
        [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1")" = 200 ] && return 0
        sleep 0.1
    done
    log "mirror not healthy after 30s ($1)"; tail -n 20 "$BERTH_LOG" | cut -c1-300 >&2
    return 1
}

stop_berth() { stop_pid "$BERTH_PID" 20; BERTH_PID=; }

# berth_log_mark / berth_log_since MARK: log lines written after a mark
berth_log_mark() { wc -l <"$BERTH_LOG" 2>/dev/null || echo 0; }
berth_log_since() { tail -n +"$(($1 + 1))" "$BERTH_LOG" | sed 's/\x1b\[[0-9;]*m//g'; }   # ANSI colours stripped

# ---- containerd --------------------------------------------------------------
# start_containerd NAME [EXTRA_TOML]: a containerd with its own root/state/socket under
# $E2E_DIR/ctd-NAME; sets CTD_SOCK and CTD_PID.
start_containerd() {
    local d="$E2E_DIR/ctd-$1"
    mkdir -p "$d"
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = ""
${2:-}
EOF
    containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
    CTD_PID=$!
    _track "$CTD_PID"
    CTD_SOCK="$d/containerd.sock"
    wait_for_socket "$CTD_SOCK" 30 || return 1
    local i
    for ((i = 0; i < 100; i++)); do
        ctr -a "$CTD_SOCK" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "containerd $1 not answering"; tail -n 20 "$d/containerd.log" >&2
    return 1
}

stop_containerd() { stop_pid "${CTD_PID:-}"; CTD_PID=; }

# write_hosts_toml CERTS_DIR REGISTRY SERVER_URL MIRROR_URL
write_hosts_toml() {
    mkdir -p "$1/$2"
    cat >"$1/$2/hosts.toml" <<EOF
server = "$3"

[host."$4"]
  capabilities = ["pull", "resolve"]
EOF
}

# ctr_e2e ARGS...: ctr against the current containerd, namespace e2e
ctr_e2e() { timeout 180 ctr -a "$CTD_SOCK" -n e2e "$@"; }

# ---- dockerd -----------------------------------------------------------------
# start_dockerd MIRROR_URL: sets DOCKER_HOST and DOCKERD_PID.
start_dockerd() {
    local d="$E2E_DIR/dk"
    mkdir -p "$d"
    cat >"$d/daemon.json" <<EOF
{"registry-mirrors": ["$1"], "iptables": false, "ip6tables": false, "bridge": "none",
 "ip-forward": false, "ip-masq": false,
 "storage-driver": "vfs", "data-root": "$d/root", "exec-root": "$d/exec",
 "pidfile": "$d/docker.pid", "hosts": ["unix://$d/docker.sock"]}
EOF
    dockerd --config-file "$d/daemon.json" >"$d/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    _track "$DOCKERD_PID"
    export DOCKER_HOST="unix://$d/docker.sock"
    wait_for_socket "$d/docker.sock" 60 || { tail -n 20 "$d/dockerd.log" >&2; return 1; }
    local i
    for ((i = 0; i < 300; i++)); do
        docker version >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.2
    done
    log "dockerd not answering"; tail -n 20 "$d/dockerd.log" >&2
    return 1
}

stop_dockerd() { stop_pid "$DOCKERD_PID" 20; DOCKERD_PID=; }

# ---- images --------------------------------------------------------------------
# make_and_push KIND NAME TAG SIZE...: KIND single|multi; pushes to upstream as
# library/NAME:TAG.
make_and_push() {
    local kind=$1 name=$2 tag=$3; shift 3
    local dir="$E2E_DIR/img-$name-$tag" all=
    python3 "$E2E_SRC/mkimage.py" "$kind" "$dir" "$tag" "$@" >/dev/null || return 1
    [ "$kind" = multi ] && all=--all
    timeout 120 skopeo copy -q $all --dest-tls-verify=false \
        "oci:$dir:$tag" "docker://$UP_ADDR/library/$name:$tag" >"$E2E_DIR/push-$name.log" 2>&1 ||
        { cat "$E2E_DIR/push-$name.log" >&2; return 1; }
}

ACCEPT_ALL='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.docker.distribution.manifest.v2+json'

# get_manifest BASE_URL REPO REF [QUERY] -> raw bytes on stdout
get_manifest() {
    curl -sf -m 30 -H "Accept: $ACCEPT_ALL" "$1/v2/$2/manifests/$3${4:+?$4}"
}

# json_check FILE PYTHON: runs PYTHON (assert statements) with `j` = the JSON in FILE; on a
# failed assertion prints it and the start of the JSON, and returns 1
json_check() {
    python3 - "$1" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
try:
    exec(sys.argv[2])
except AssertionError as e:
    print("assertion failed:", e)
    print(json.dumps(j, indent=1)[:3000])
    sys.exit(1)
PY
}

# sha256 of stdin as sha256:HEX
sha256_of() { echo "sha256:$(sha256sum | cut -d' ' -f1)"; }

# manifest_field FIELD < manifest.json; FIELD: config | layers | platform:OS/ARCH
#   config            -> config digest
#   layers            -> layer digests, one a line
#   platform:os/arch  -> digest of that platform's manifest in an index
manifest_field() {
    python3 -c '
import json, sys
m = json.load(sys.stdin)
f = sys.argv[1]
if f == "config":
    print(m["config"]["digest"])
elif f == "layers":
    for l in m["layers"]:
        print(l["digest"])
elif f.startswith("platform:"):
    os_, arch = f.split(":", 1)[1].split("/")
    for d in m["manifests"]:
        p = d.get("platform", {})
        if p.get("os") == os_ and p.get("architecture") == arch:
            print(d["digest"])
' "$1"
}

# ---- TAP-ish reporting ---------------------------------------------------------
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
fail() {
    FAILED=$((FAILED + 1)); echo "not ok - $1"
    shift
    local l
    for l in "$@"; do printf '%s\n' "$l"; done | while IFS= read -r l; do printf '#   %s\n' "$l"; done
}
# check NAME CMD...: ok when CMD exits 0
check() {
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name" "command failed: $*"; fi
}
