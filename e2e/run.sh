#!/usr/bin/env bash
# berth end-to-end suite: real containerd, dockerd and skopeo against berth,
# with a local distribution as the upstream. Needs root. See e2e/README.md.
#
#   BERTH_BIN=target/release/berth bash e2e/run.sh
#   E2E_MIRROR=distribution bash e2e/run.sh   # dry run: distribution proxy instead of berth
#   E2E_KEEP=1 ...                            # keep the scratch dir (logs) afterwards
#   E2E_SCENARIOS="a m" ...                   # only these scenarios (after the setup)
set -u -o pipefail

# shellcheck source=e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "e2e: needs root (containerd, dockerd)" >&2; exit 2; }
for t in docker-registry containerd ctr dockerd docker skopeo curl python3 sha256sum; do
    command -v "$t" >/dev/null || { echo "e2e: missing $t" >&2; exit 2; }
done

log "scratch dir $E2E_DIR, mirror=$E2E_MIRROR${E2E_MIRROR:+ }$( [ "$E2E_MIRROR" = berth ] && echo "($BERTH_BIN)")"

# print berth log lines since MARK matching a pattern (diagnostics on failure)
berth_lines() { berth_log_since "$1" | grep -E -- "$2" | tail -n "${3:-8}"; }

# ns_ok MARK REPO NS: every GET/HEAD line of berth's log since MARK that
# mentions REPO names ns NS (ns=NS, ns="NS", "ns":"NS" or ?ns=NS), and there
# is at least one.
ns_ok() {
    local lines
    lines=$(berth_log_since "$1" | grep -F -- "$2/" | grep -E '(GET|HEAD)' || true)
    [ -n "$lines" ] || { echo "no berth log line mentions $2"; return 1; }
    local bad
    bad=$(grep -vE "ns\"?[=:] ?(Some\()?\"?$3([^a-z0-9.-]|$)" <<<"$lines" || true)
    [ -z "$bad" ] || { echo "lines without ns=$3:"; head -n 5 <<<"$bad"; return 1; }
}

# blobs_in_layout DIR DIGEST...: each digest present in an OCI layout with
# matching content
blobs_in_layout() {
    local dir=$1 d f; shift
    for d in "$@"; do
        f="$dir/blobs/sha256/${d#sha256:}"
        [ -f "$f" ] || { echo "missing blob $d in $dir"; return 1; }
        [ "$(sha256_of <"$f")" = "$d" ] || { echo "blob $d in $dir has wrong content"; return 1; }
    done
}

# in_content_store DIGEST...: all present in the current containerd's content store
in_content_store() {
    local have d
    have=$(ctr_e2e content ls -q 2>/dev/null) || { echo "ctr content ls failed"; return 1; }
    for d in "$@"; do
        grep -qxF "$d" <<<"$have" || { echo "content store lacks $d"; return 1; }
    done
}

# run_check NAME CMD...: like check, but shows the command's output on failure
run_check() {
    local name=$1 out; shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name" "command: $*" "$(tail -n 6 <<<"$out")"
    fi
}

docker_image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null; }

docker_repull() {
    docker rmi -f single:1 >/dev/null 2>&1 || true
    [ -z "$(docker_image_id single:1)" ] || { echo "rmi did not remove single:1"; return 1; }
    timeout 180 docker pull single:1 || return 1
    local id; id=$(docker_image_id single:1)
    [ "$id" = "$SINGLE_CONFIG" ] || { echo "image id $id != config digest $SINGLE_CONFIG"; return 1; }
}

skopeo_inspect_digest() {
    timeout 60 skopeo inspect --raw --tls-verify=false "docker://$1/library/$2" | sha256_of
}

skopeo_same_digest() {
    local got; got=$(skopeo_inspect_digest "$BERTH_ADDR" single:1) || return 1
    [ "$got" = "$SINGLE_DIGEST" ] || { echo "berth: $got, upstream: $SINGLE_DIGEST"; return 1; }
}

# pull_via_fresh_containerd NAME: fresh root/state, pull single and multi (arm64)
CERTS="$E2E_DIR/certs.d"
pull_single() {
    ctr_e2e images pull --hosts-dir "$CERTS" docker.io/library/single:1 || return 1
    in_content_store "$SINGLE_DIGEST" $SINGLE_LAYERS
}
pull_multi_arm64() {
    ctr_e2e images pull --platform linux/arm64 --hosts-dir "$CERTS" registry.test/library/multi:1 || return 1
    in_content_store "$MULTI_DIGEST" "$MULTI_ARM64" $MULTI_ARM64_LAYERS
}

# ---------------------------------------------------------------------------
setup() {
    start_upstream || return 1
    make_and_push single single 1 2M 1M || return 1
    make_and_push multi multi 1 1M 512K || return 1

    local m="$E2E_DIR/single.manifest"
    get_manifest "$UP_URL" library/single 1 >"$m" || return 1
    SINGLE_DIGEST=$(sha256_of <"$m")
    SINGLE_CONFIG=$(manifest_field config <"$m")
    SINGLE_LAYERS=$(manifest_field layers <"$m" | tr '\n' ' ')

    local idx="$E2E_DIR/multi.index"
    get_manifest "$UP_URL" library/multi 1 >"$idx" || return 1
    MULTI_DIGEST=$(sha256_of <"$idx")
    MULTI_AMD64=$(manifest_field platform:linux/amd64 <"$idx")
    MULTI_ARM64=$(manifest_field platform:linux/arm64 <"$idx")
    MULTI_AMD64_LAYERS=$(get_manifest "$UP_URL" library/multi "$MULTI_AMD64" | manifest_field layers | tr '\n' ' ')
    MULTI_ARM64_LAYERS=$(get_manifest "$UP_URL" library/multi "$MULTI_ARM64" | manifest_field layers | tr '\n' ' ')
    MULTI_AMD64_CONFIG=$(get_manifest "$UP_URL" library/multi "$MULTI_AMD64" | manifest_field config)
    log "single $SINGLE_DIGEST config $SINGLE_CONFIG layers $SINGLE_LAYERS"
    log "multi $MULTI_DIGEST amd64 $MULTI_AMD64 arm64 $MULTI_ARM64"
    [ -n "$SINGLE_LAYERS" ] && [ -n "$MULTI_ARM64_LAYERS" ] && [ -n "$MULTI_AMD64_LAYERS" ] || return 1

    # The fallback server is a closed loopback port: a pull that succeeds was served by the
    # mirror, and a failing one sends nothing off this machine.
    write_hosts_toml "$CERTS" docker.io "https://127.0.0.1:9" "$BERTH_URL"
    write_hosts_toml "$CERTS" registry.test "https://127.0.0.1:9" "$BERTH_URL"

    start_berth || return 1
}

# a. GET /v2/
scenario_a() {
    local hdr code
    hdr=$(curl -s -m 10 -D - -o /dev/null "$BERTH_URL/v2/")
    code=$(head -n1 <<<"$hdr" | awk '{print $2}')
    if [ "$code" = 200 ] && tr -d '\r' <<<"$hdr" | grep -qiE '^Docker-Distribution-Api-Version: registry/2\.0$'; then
        pass "a: GET /v2/ -> 200 with Docker-Distribution-Api-Version: registry/2.0"
    else
        fail "a: GET /v2/ -> 200 with Docker-Distribution-Api-Version: registry/2.0" "$(tr -d '\r' <<<"$hdr" | head -n 8)"
    fi
}

# b. containerd pull of docker.io/library/single:1 through berth (?ns=docker.io)
scenario_b() {
    start_containerd b || { fail "b: containerd starts"; return; }
    local mark; mark=$(berth_log_mark)
    run_check "b: containerd pulls docker.io/library/single:1 via berth" pull_single
    run_check "b: berth log shows ns=docker.io on the single:1 requests" ns_ok "$mark" library/single docker.io
    local d n bad=()
    for d in $SINGLE_LAYERS; do
        n=$(count_upstream_blob_gets "$d")
        [ "$n" = 1 ] || bad+=("$d fetched from upstream $n times")
    done
    if [ ${#bad[@]} = 0 ]; then pass "b: each layer GET from upstream exactly once"
    else fail "b: each layer GET from upstream exactly once" "${bad[@]}"; fi
}

# c. containerd pull of a multi-arch index, registry.test, arm64 only
scenario_c() {
    local mark; mark=$(berth_log_mark)
    run_check "c: containerd pulls registry.test/library/multi:1 --platform linux/arm64" pull_multi_arm64
    run_check "c: berth log shows ns=registry.test on the multi:1 requests" ns_ok "$mark" library/multi registry.test
}

# d. dockerd with registry-mirrors = berth
scenario_d() {
    start_dockerd "$BERTH_URL" || { fail "d: dockerd starts"; return; }
    run_check "d: docker pull single:1 via registry-mirrors; image id = config digest" docker_repull
}

# e. skopeo inspect / copy through berth
scenario_e() {
    run_check "e: skopeo inspect --raw via berth = upstream manifest digest" skopeo_same_digest
    local out="$E2E_DIR/skopeo-out" out_all="$E2E_DIR/skopeo-out-all"
    run_check "e: skopeo copy multi:1 (host platform) -> oci: blobs match upstream" skopeo_copy_one "$out"
    run_check "e: skopeo copy --all multi:1 -> oci: index + all blobs match upstream" skopeo_copy_all "$out_all"
    # containerd (b, c), dockerd (d) and skopeo (e) all pulled these by now
    local d n bad=()
    for d in $SINGLE_LAYERS $MULTI_AMD64_LAYERS $MULTI_ARM64_LAYERS; do
        n=$(count_upstream_blob_gets "$d")
        [ "$n" = 1 ] || bad+=("$d fetched from upstream $n times")
    done
    if [ ${#bad[@]} = 0 ]; then pass "e: after containerd, dockerd and skopeo, every layer left upstream exactly once"
    else fail "e: after containerd, dockerd and skopeo, every layer left upstream exactly once" "${bad[@]}"; fi
}

skopeo_copy_one() {
    timeout 120 skopeo copy -q --src-tls-verify=false "docker://$BERTH_ADDR/library/multi:1" "oci:$1:1" || return 1
    blobs_in_layout "$1" "$MULTI_AMD64" "$MULTI_AMD64_CONFIG" $MULTI_AMD64_LAYERS
}

skopeo_copy_all() {
    timeout 120 skopeo copy -q --all --src-tls-verify=false "docker://$BERTH_ADDR/library/multi:1" "oci:$1:1" || return 1
    blobs_in_layout "$1" "$MULTI_DIGEST" "$MULTI_AMD64" "$MULTI_ARM64" $MULTI_AMD64_LAYERS $MULTI_ARM64_LAYERS || return 1
    grep -qF "\"$MULTI_DIGEST\"" "$1/index.json" || { echo "index.json does not point at $MULTI_DIGEST"; cat "$1/index.json"; return 1; }
}

upstream_is_down() {
    ! curl -s -o /dev/null -m 3 "$UP_URL/v2/"
}

# f/g: everything again, upstream stopped (g: after a berth restart too)
offline_pulls() {
    local tag=$1
    stop_containerd
    start_containerd "$tag" || { fail "$tag: fresh containerd starts"; return; }
    run_check "$tag: fresh containerd pulls docker.io/library/single:1, upstream down" pull_single
    run_check "$tag: fresh containerd pulls registry.test/library/multi:1 arm64, upstream down" pull_multi_arm64
    if [ -n "$DOCKERD_PID" ]; then
        run_check "$tag: docker rmi + pull single:1, upstream down" docker_repull
    else
        fail "$tag: docker rmi + pull single:1, upstream down" "dockerd not running"
    fi
    run_check "$tag: skopeo inspect via berth, upstream down" skopeo_same_digest
}

scenario_f() {
    stop_upstream
    run_check "f: upstream is stopped" upstream_is_down
    offline_pulls f
}

scenario_g() {
    stop_berth
    start_berth || { fail "g: berth restarts with upstream down"; return; }
    run_check "g: upstream is still stopped" upstream_is_down
    offline_pulls g
}

# h. 8 concurrent GETs of one never-fetched 32 MiB blob: one upstream GET
scenario_h() {
    start_upstream || { fail "h: upstream restarts"; return; }
    if [ -z "$BERTH_PID" ] || ! kill -0 "$BERTH_PID" 2>/dev/null; then
        log "mirror is not running (earlier failure): starting it again for h and i"
        start_berth || { fail "h: mirror starts"; return; }
    fi
    make_and_push single big 1 32M || { fail "h: push big:1"; return; }
    local layer; layer=$(get_manifest "$UP_URL" library/big 1 | manifest_field layers | head -n1)
    [ -n "$layer" ] || { fail "h: big:1 layer digest"; return; }
    local before; before=$(count_upstream_blob_gets "$layer")
    local mark; mark=$(berth_log_mark)
    local i pids=() dir="$E2E_DIR/concurrent"
    mkdir -p "$dir"
    for i in 1 2 3 4 5 6 7 8; do
        curl -s -m 120 -o "$dir/$i" -w '%{http_code}' "$BERTH_URL/v2/library/big/blobs/$layer" >"$dir/$i.code" &
        pids+=($!)
    done
    local rcs=() bad=()
    for i in "${!pids[@]}"; do wait "${pids[i]}"; rcs+=($?); done
    for i in 1 2 3 4 5 6 7 8; do
        [ "${rcs[i - 1]}" = 0 ] || bad+=("curl #$i exit ${rcs[i - 1]}")
        [ "$(cat "$dir/$i.code")" = 200 ] || bad+=("curl #$i status $(cat "$dir/$i.code")")
        [ -f "$dir/$i" ] && [ "$(sha256_of <"$dir/$i")" = "$layer" ] || bad+=("curl #$i body sha256 mismatch ($(stat -c %s "$dir/$i" 2>/dev/null) bytes)")
    done
    if [ ${#bad[@]} = 0 ] && cmp -s "$dir/1" "$dir/8"; then
        pass "h: 8 concurrent GETs of a 32 MiB blob: all 200, byte-identical, right sha256"
    else
        fail "h: 8 concurrent GETs of a 32 MiB blob: all 200, byte-identical, right sha256" "${bad[@]}"
    fi
    local after; after=$(count_upstream_blob_gets "$layer")
    if [ $((after - before)) = 1 ]; then
        pass "h: upstream served that blob exactly once"
    else
        fail "h: upstream served that blob exactly once" "upstream GETs: $((after - before))" \
            "$(grep -F "$layer" "$UP_LOG" | grep -F '"GET' | tail -n 3)"
    fi
    berth_lines "$mark" "${layer#sha256:}" 10 | sed 's/^/#   berth: /'
}

# i. writes refused, unknown ns refused
scenario_i() {
    local body code
    body=$(curl -s -m 10 -X POST -w '\n%{http_code}' "$BERTH_URL/v2/library/single/blobs/uploads/")
    code=$(tail -n1 <<<"$body"); body=$(sed '$d' <<<"$body")
    if [ "$code" = 405 ] && [ "$(printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"][0]["code"])' 2>/dev/null)" = UNSUPPORTED ]; then
        pass "i: POST blobs/uploads/ -> 405 UNSUPPORTED"
    else
        fail "i: POST blobs/uploads/ -> 405 UNSUPPORTED" "status $code body $(head -c 300 <<<"$body")"
    fi
    body=$(curl -s -m 10 -H "Accept: $ACCEPT_ALL" -w '\n%{http_code}' "$BERTH_URL/v2/library/single/manifests/1?ns=evil.example")
    code=$(tail -n1 <<<"$body"); body=$(sed '$d' <<<"$body")
    if [ "$code" = 403 ] && [ "$(printf '%s' "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"][0]["code"])' 2>/dev/null)" = DENIED ]; then
        pass "i: ?ns=evil.example -> 403 DENIED"
    else
        fail "i: ?ns=evil.example -> 403 DENIED" "status $code body $(head -c 300 <<<"$body")"
    fi
}

scenario_alive() {
    if [ -n "$BERTH_PID" ] && kill -0 "$BERTH_PID" 2>/dev/null; then pass "berth still running at the end"
    else fail "berth still running at the end" "$(tail -n 5 "$BERTH_LOG")"; fi
}

# shellcheck source=e2e/preheat.sh
. "$(dirname "${BASH_SOURCE[0]}")/preheat.sh"
# shellcheck source=e2e/gc.sh
. "$(dirname "${BASH_SOURCE[0]}")/gc.sh"
# shellcheck source=e2e/resilience.sh
. "$(dirname "${BASH_SOURCE[0]}")/resilience.sh"
# shellcheck source=e2e/peers.sh
. "$(dirname "${BASH_SOURCE[0]}")/peers.sh"
# shellcheck source=e2e/secure.sh
. "$(dirname "${BASH_SOURCE[0]}")/secure.sh"
# shellcheck source=e2e/bucket.sh
. "$(dirname "${BASH_SOURCE[0]}")/bucket.sh"
# shellcheck source=e2e/lazy.sh
. "$(dirname "${BASH_SOURCE[0]}")/lazy.sh"
# shellcheck source=e2e/clients.sh
. "$(dirname "${BASH_SOURCE[0]}")/clients.sh"

# ---------------------------------------------------------------------------
START=$SECONDS
if setup; then
    # E2E_SCENARIOS="a m" runs a subset (setup always runs).
    for s in ${E2E_SCENARIOS:-a b c d e f g h i j k l m n o p p2 q alive}; do
        log "--- scenario $s ($((SECONDS - START))s)"
        "scenario_$s"
    done
else
    fail "setup (upstream, images, mirror)" "$(tail -n 5 "$UP_LOG" 2>/dev/null)" "$(tail -n 5 "$BERTH_LOG" 2>/dev/null)"
fi
log "took $((SECONDS - START))s; logs in $E2E_DIR (E2E_KEEP=1 keeps them)"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
