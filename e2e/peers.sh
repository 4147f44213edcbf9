# shellcheck shell=bash
# Scenario m: three berth peers, three containerds, one distribution upstream. Sourced by
# run.sh; uses its helpers.
#
# Registry peers.test is fetched through e2e/faultproxy.py in front of distribution, so that
# a transfer can be slowed down. 1. The three containerds pull the same multi-layer image at
# once, each through its own berth: every blob and the manifest are GET from upstream once.
# 2. `berth preheat --cluster` on one instance warms all three, fetching each blob once.
# 3. The owner of a new image's largest blob is killed with SIGKILL while it streams: every
# pull still completes (each containerd lists all three berths, its own first), and the
# survivors mark the owner down.

PEER_PROXY_ADDR="127.0.0.1:15011"
PEER_PROXY_LOG="$E2E_DIR/faultproxy-peers.log"
PEER_PIDS=()
PEER_SOCKS=()

peer_port() { echo $((15060 + $1)); }
peer_admin() { echo "127.0.0.1:$((15063 + $1))"; }

start_peer() {
    local i=$1 port; port=$(peer_port "$i")
    cat >"$E2E_DIR/peer-$i.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "$(peer_admin "$i")"
default_registry = "peers.test"

[storage]
dir = "$E2E_DIR/peer-$i"
memory_capacity = "64MiB"
memory_max_object = "8MiB"
disk_capacity = "2GiB"

[[registry]]
host = "peers.test"
endpoint = "http://$PEER_PROXY_ADDR"
read_timeout = "5s"

[peers]
self = "http://127.0.0.1:$port"
static = ["http://127.0.0.1:15060", "http://127.0.0.1:15061", "http://127.0.0.1:15062"]
read_timeout = "3s"
backoff = "60s"
token_env = "BERTH_E2E_PEER_TOKEN"
EOF
    BERTH_E2E_PEER_TOKEN=e2e-peer-secret "$BERTH_BIN" serve --config "$E2E_DIR/peer-$i.toml" \
        >>"$E2E_DIR/peer-$i.log" 2>&1 &
    PEER_PIDS[i]=$!
    _track "${PEER_PIDS[i]}"
    wait_for_http "http://$(peer_admin "$i")/healthz" 30
}

# peer_hosts_toml I: containerd I's certs.d for peers.test: its own berth, then the others.
peer_hosts_toml() {
    local i=$1 dir="$E2E_DIR/certs-peer-$1/peers.test" j
    mkdir -p "$dir"
    echo 'server = "https://127.0.0.1:9"' >"$dir/hosts.toml"
    for j in "$i" $(((i + 1) % 3)) $(((i + 2) % 3)); do
        printf '\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' "$(peer_port "$j")" \
            >>"$dir/hosts.toml"
    done
}

# pull_on I IMAGE: containerd I pulls IMAGE through its certs.d
pull_on() {
    timeout 180 ctr -a "${PEER_SOCKS[$1]}" -n e2e images pull --hosts-dir "$E2E_DIR/certs-peer-$1" "$2" \
        >"$E2E_DIR/pull-peer-$1-${2##*:}.log" 2>&1
}

# pull_everywhere IMAGE: the three pulls at once; fails naming the pulls that failed
pull_everywhere() {
    local i pids=() bad=
    for i in 0 1 2; do pull_on "$i" "$1" & pids[i]=$!; done
    for i in 0 1 2; do wait "${pids[i]}" || bad="$bad $i"; done
    [ -z "$bad" ] || { echo "pulls failed on containerd$bad:"; for i in $bad; do tail -n 3 "$E2E_DIR/pull-peer-$i-${1##*:}.log"; done; return 1; }
}

# once_upstream DIGEST...: each was GET from upstream exactly once
once_upstream() {
    local d n
    for d in "$@"; do
        n=$(grep -cE "\"GET /v2/[^ \"]+/(blobs|manifests)/$d[ ?]" "$UP_LOG" || true)
        [ "$n" = 1 ] || { echo "$d GET $n times from upstream"; return 1; }
    done
}

scenario_m() {
    if [ "$E2E_MIRROR" != berth ]; then pass "m: skipped (peers are berth's)"; return; fi
    start_upstream 2>/dev/null || true
    python3 "$E2E_SRC/faultproxy.py" "${PEER_PROXY_ADDR##*:}" "$UP_PORT" >"$PEER_PROXY_LOG" 2>&1 &
    _track $!
    wait_for_port "$PEER_PROXY_ADDR" 10 || { fail "m: fault proxy starts"; return; }
    local i
    for i in 0 1 2; do
        start_peer "$i" || { fail "m: berth peer $i starts" "$(tail -n 5 "$E2E_DIR/peer-$i.log")"; return; }
        start_containerd "peer-$i" || { fail "m: containerd $i starts"; return; }
        PEER_SOCKS[i]=$CTD_SOCK
        peer_hosts_toml "$i"
    done

    # 1. three pulls of one image at once, through three berths: upstream sees each once
    make_and_push single cluster 1 3M 2M 1M 1M || { fail "m: push cluster:1"; return; }
    local m="$E2E_DIR/cluster.manifest" digest config layers
    get_manifest "$UP_URL" library/cluster 1 >"$m" || { fail "m: manifest of cluster:1"; return; }
    digest=$(sha256_of <"$m"); config=$(manifest_field config <"$m")
    layers=$(manifest_field layers <"$m" | tr '\n' ' ')
    local out
    # shellcheck disable=SC2086
    if out=$(pull_everywhere peers.test/library/cluster:1 && once_upstream "$digest" "$config" $layers 2>&1); then
        pass "m: three containerds pull at once through three peers; every blob and the manifest GET from upstream once"
    else
        fail "m: three containerds pull at once through three peers; every blob and the manifest GET from upstream once" "$out"
    fi

    # 2. berth preheat --cluster on one instance warms all three; upstream sees each blob once
    make_and_push single cluster 3 2M 1M || { fail "m: push cluster:3"; return; }
    local m3="$E2E_DIR/cluster3.manifest" blobs3 d missing=
    get_manifest "$UP_URL" library/cluster 3 >"$m3"
    blobs3="$(manifest_field config <"$m3") $(manifest_field layers <"$m3" | tr '\n' ' ')"
    out=$(BERTH_ADMIN="http://$(peer_admin 1)" timeout 120 "$BERTH_BIN" preheat --cluster peers.test/library/cluster:3 2>&1)
    local code=$?
    for i in 0 1 2; do
        for d in $blobs3; do
            [ -f "$E2E_DIR/peer-$i/v1/blobs/sha256/${d:7:2}/${d#sha256:}" ] || missing="$missing peer-$i:${d:7:12}"
        done
    done
    # shellcheck disable=SC2086
    if [ "$code" = 0 ] && [ -z "$missing" ] && grep -c "^peer .*: succeeded" <<<"$out" | grep -qx 2 &&
        once_upstream $blobs3 >/dev/null; then
        pass "m: berth preheat --cluster warms all three peers; each blob GET from upstream once"
    else
        fail "m: berth preheat --cluster warms all three peers; each blob GET from upstream once" \
            "exit $code, missing:$missing" "$(tail -n 6 <<<"$out")" "$(once_upstream $blobs3)"
    fi

    # 3. the owner of the largest blob is killed while it streams: every pull completes
    make_and_push single cluster 2 24M 1M || { fail "m: push cluster:2"; return; }
    local big owner owner_i
    big=$(get_manifest "$UP_URL" library/cluster 2 | manifest_field layers | head -n 1)
    owner=$(curl -sf "http://$(peer_admin 0)/api/v1/peers?digest=$big" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["owner"])')
    owner_i=$((${owner##*:} - 15060))
    log "largest blob $big is owned by $owner (peer $owner_i)"
    curl -sf -m 5 "http://$PEER_PROXY_ADDR/__mode/throttle:3000000" >/dev/null
    local pids=() bad= owner_tmp="$E2E_DIR/peer-$owner_i/v1/tmp"
    for i in 0 1 2; do pull_on "$i" peers.test/library/cluster:2 & pids[i]=$!; done
    for ((i = 0; i < 100; i++)); do
        [ -n "$(ls -A "$owner_tmp" 2>/dev/null)" ] && break
        sleep 0.1
    done
    sleep 2
    local streaming; streaming=$(ls -A "$owner_tmp" 2>/dev/null | wc -l)
    kill -KILL "${PEER_PIDS[owner_i]}"
    curl -sf -m 5 "http://$PEER_PROXY_ADDR/__mode/normal" >/dev/null
    for i in 0 1 2; do wait "${pids[i]}" || bad="$bad $i"; done
    local survivor=$(((owner_i + 1) % 3)) status="$E2E_DIR/peers-after-kill.json"
    curl -sf "http://$(peer_admin "$survivor")/api/v1/peers" >"$status"
    if [ -z "$bad" ] && [ "$streaming" -ge 1 ] &&
        json_check "$status" "assert [p['healthy'] for p in j['peers'] if p['peer'] == '$owner'] == [False], 'owner not marked down'"; then
        pass "m: the owner of the largest blob killed mid-stream; all three pulls complete and the owner is marked down"
    else
        fail "m: the owner of the largest blob killed mid-stream; all three pulls complete and the owner is marked down" \
            "owner fills in flight when killed: $streaming; failed pulls:$bad" \
            "$(for i in $bad; do tail -n 3 "$E2E_DIR/pull-peer-$i-2.log"; done)"
    fi
}
