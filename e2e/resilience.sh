# shellcheck shell=bash
# Scenario l: resilient transfers with real parts. Sourced by run.sh; uses its helpers.
#
# berth fetches registry faulty.test through e2e/faultproxy.py in front of distribution:
# each blob response cut once at a random offset → clients get complete, verified bodies and
# the upstream sees Range requests; cut forever → the client's stream aborts and nothing is
# kept; throttled and berth killed with SIGKILL mid-fill → after a restart the blob is served
# byte-exact and the store holds no partial file; a store that fills up mid-write, then a
# read-only one → the pull passes through from upstream, verified, and nothing is kept.

PROXY_ADDR="127.0.0.1:15010"
PROXY_LOG="$E2E_DIR/faultproxy.log"

proxy_mode() { curl -sf -m 5 "http://$PROXY_ADDR/__mode/$1" >/dev/null; }

start_faulty_berth() {
    BERTH_DATA="$E2E_DIR/berth-faulty" \
        BERTH_EXTRA_TOML=$'[[registry]]\nhost = "faulty.test"\nendpoint = "http://'"$PROXY_ADDR"$'"\nread_timeout = "5s"' \
        start_berth
}

# get_via_berth DIGEST OUT: GET a blob of library/big through berth as faulty.test
get_via_berth() { curl -s -m 120 -o "$2" -w '%{http_code}' "$BERTH_URL/v2/library/big/blobs/$1?ns=faulty.test"; }

scenario_l() {
    if [ "$E2E_MIRROR" != berth ]; then pass "l: skipped (resumable fills are berth's)"; return; fi
    curl -sf -m 5 "$UP_URL/v2/" >/dev/null || start_upstream || { fail "l: upstream starts"; return; }
    python3 "$E2E_SRC/faultproxy.py" "${PROXY_ADDR##*:}" "$UP_PORT" >"$PROXY_LOG" 2>&1 &
    _track $!
    wait_for_port "$PROXY_ADDR" 10 || { fail "l: fault proxy starts"; return; }
    stop_berth
    start_faulty_berth || { fail "l: berth with a faulty registry starts"; return; }

    # big:1 has three 16 MiB layers, one for each case.
    make_and_push single big 1 16M 16M 16M || { fail "l: push big:1"; return; }
    local layers l1 l2 l3 code
    layers=$(get_manifest "$UP_URL" library/big 1 | manifest_field layers)
    l1=$(sed -n 1p <<<"$layers"); l2=$(sed -n 2p <<<"$layers"); l3=$(sed -n 3p <<<"$layers")

    # 1. cut once: resumed with Range, the client sees one complete body
    proxy_mode cut-once
    code=$(get_via_berth "$l1" "$E2E_DIR/l1")
    if [ "$code" = 200 ] && [ "$(sha256_of <"$E2E_DIR/l1")" = "$l1" ] &&
        grep -E "^GET /v2/library/big/blobs/$l1 bytes=[0-9]+- 206" "$PROXY_LOG" >/dev/null; then
        pass "l: a body cut once is resumed with Range; the client gets it complete and verified"
    else
        fail "l: a body cut once is resumed with Range; the client gets it complete and verified" \
            "status $code" "$(grep -F "$l1" "$PROXY_LOG" | tail -n 4)"
    fi

    # 2. cut forever: the client's stream aborts, nothing is kept
    proxy_mode cut-always
    code=$(get_via_berth "$l2" "$E2E_DIR/l2")
    sleep 1
    if [ "$(sha256_of <"$E2E_DIR/l2")" != "$l2" ] &&
        [ ! -e "$E2E_DIR/berth-faulty/v1/blobs/sha256/${l2:7:2}/${l2#sha256:}" ] &&
        [ -z "$(ls -A "$E2E_DIR/berth-faulty/v1/tmp")" ]; then
        pass "l: a body cut every time aborts the client's stream and nothing is kept"
    else
        fail "l: a body cut every time aborts the client's stream and nothing is kept" "status $code, $(wc -c <"$E2E_DIR/l2") bytes"
    fi

    # 3. throttled, SIGKILL mid-fill, restart: byte-exact, no partial file
    proxy_mode throttle:4000000
    get_via_berth "$l3" "$E2E_DIR/l3-killed" >/dev/null &
    local getter=$!
    sleep 2
    local partial; partial=$(ls -A "$E2E_DIR/berth-faulty/v1/tmp" | wc -l)
    kill -KILL "$BERTH_PID"; wait "$BERTH_PID" 2>/dev/null; BERTH_PID=
    wait "$getter" 2>/dev/null
    proxy_mode normal
    start_faulty_berth || { fail "l: berth restarts after SIGKILL"; return; }
    local leftover; leftover=$(ls -A "$E2E_DIR/berth-faulty/v1/tmp" | wc -l)
    code=$(get_via_berth "$l3" "$E2E_DIR/l3")
    if [ "$partial" -ge 1 ] && [ "$leftover" = 0 ] && [ "$code" = 200 ] &&
        [ "$(sha256_of <"$E2E_DIR/l3")" = "$l3" ]; then
        pass "l: killed mid-fill, restarted: no partial file left, the blob served byte-exact"
    else
        fail "l: killed mid-fill, restarted: no partial file left, the blob served byte-exact" \
            "temp files while filling: $partial, after restart: $leftover, status $code"
    fi

    # 4. a store that fills up mid-write, then a read-only one: pulls pass through, verified
    stop_berth
    local small="$E2E_DIR/berth-small" mark
    mkdir -p "$small" && mount -t tmpfs -o size=6m tmpfs "$small" || { fail "l: a 6 MiB tmpfs for the store"; return; }
    BERTH_DATA="$small" \
        BERTH_EXTRA_TOML=$'[[registry]]\nhost = "faulty.test"\nendpoint = "http://'"$PROXY_ADDR"$'"' \
        start_berth || { fail "l: berth on a small store starts"; return; }
    mark=$(berth_log_mark)
    code=$(get_via_berth "$l1" "$E2E_DIR/l1-full")
    if [ "$code" = 200 ] && [ "$(sha256_of <"$E2E_DIR/l1-full")" = "$l1" ] &&
        [ ! -e "$small/v1/blobs/sha256/${l1:7:2}/${l1#sha256:}" ] &&
        berth_log_since "$mark" | grep -q "disk tier cannot write.*pass-through\|pass-through.*disk tier cannot write"; then
        pass "l: the store fills up mid-write: the pull passes through, verified, nothing kept, logged"
    else
        fail "l: the store fills up mid-write: the pull passes through, verified, nothing kept, logged" \
            "status $code" "$(berth_log_since "$mark" | grep -iE 'error|warn' | tail -n 3 | cut -c1-250)"
    fi
    # The temp folder read-only (a bind mount: the store's open files keep it from a remount)
    mount --bind "$small/v1/tmp" "$small/v1/tmp" && mount -o remount,bind,ro "$small/v1/tmp" ||
        { fail "l: a read-only temp folder"; return; }
    mark=$(berth_log_mark)
    code=$(get_via_berth "$l2" "$E2E_DIR/l2-ro")
    if [ "$code" = 200 ] && [ "$(sha256_of <"$E2E_DIR/l2-ro")" = "$l2" ] &&
        berth_log_since "$mark" | grep -q "cannot make a temp file"; then
        pass "l: a read-only store: the pull passes through, verified, logged"
    else
        fail "l: a read-only store: the pull passes through, verified, logged" \
            "status $code" "$(berth_log_since "$mark" | grep -iE 'error|warn' | tail -n 3 | cut -c1-250)"
    fi
    stop_berth
    umount -l "$small/v1/tmp" 2>/dev/null || true
    umount -l "$small" 2>/dev/null || true
    start_berth || fail "l: the suite's berth starts again"
}
