# shellcheck shell=bash
# Scenario j: preheat with real parts. Sourced by run.sh; uses its helpers.
#
# With the upstream running: preheat a multi-arch image for one platform (curl), check the
# status blob by blob, check a preheated blob is answered from memory, check honesty with a
# layer deleted upstream (job failed, wait=true non-2xx, the rest cached), run the CLI. Then
# with the upstream stopped: a fresh containerd pulls the preheated tag, and the upstream log
# shows no blob of the other platform was ever requested.

ADMIN_URL="http://$ADMIN_ADDR"

# preheat_wait JSON -> prints "HTTP_CODE" then the body on the next lines
preheat_wait() {
    curl -s -m 120 -X POST -H 'Content-Type: application/json' -d "$1" \
        -w '\n%{http_code}' "$ADMIN_URL/api/v1/preheat?wait=true"
}

# status_check FILE PYTHON: assertions with `s` = a preheat status, `items` = all its items
status_check() {
    json_check "$1" $'s = j\nitems = [i for img in s["images"] for i in img["items"]]\n'"$2"
}

scenario_j() {
    if [ "$E2E_MIRROR" != berth ]; then pass "j: skipped (preheat is berth's)"; return; fi
    make_and_push multi pre 1 1M 12M || { fail "j: push pre:1"; return; }
    make_and_push single broken 1 1M 1M || { fail "j: push broken:1"; return; }
    local idx amd64 arm64 amd64_blobs arm64_layers broken_layer f body code mark
    idx=$(get_manifest "$UP_URL" library/pre 1) || { fail "j: read pre:1 index"; return; }
    amd64=$(manifest_field platform:linux/amd64 <<<"$idx")
    arm64=$(manifest_field platform:linux/arm64 <<<"$idx")
    amd64_blobs="$(get_manifest "$UP_URL" library/pre "$amd64" | manifest_field layers) $(get_manifest "$UP_URL" library/pre "$amd64" | manifest_field config)"
    arm64_layers=$(get_manifest "$UP_URL" library/pre "$arm64" | manifest_field layers | tr '\n' ' ')
    broken_layer=$(get_manifest "$UP_URL" library/broken 1 | manifest_field layers | head -n 1)
    rm -rf "$E2E_DIR/upstream-data/docker/registry/v2/blobs/sha256/${broken_layer:7:2}/${broken_layer#sha256:}"

    # 1. preheat one platform with curl
    f="$E2E_DIR/preheat-pre.json"
    body=$(preheat_wait '{"images": ["registry.test/library/pre:1"], "platforms": ["linux/arm64"]}')
    code=$(tail -n1 <<<"$body"); sed '$d' <<<"$body" >"$f"
    if [ "$code" = 200 ]; then pass "j: preheat pre:1 linux/arm64 with wait=true -> 200"
    else fail "j: preheat pre:1 linux/arm64 with wait=true -> 200" "status $code: $(head -c 600 "$f")"; fi
    run_check "j: status: succeeded, every item cached and on disk, small ones in memory" status_check "$f" '
assert s["state"] == "succeeded", s["state"]
assert [i["kind"] for i in items][:2] == ["index", "manifest"], [i["kind"] for i in items]
assert len(items) == 5, len(items)
for i in items:
    assert i["state"] == "cached", i
    assert "disk" in i["tiers"], i
    assert "memory" in i["tiers"], i  # all fit 64 MiB; the 12 MiB layer is above memory_max_object
    assert i["bytes_done"] == i["size"], i
'

    # 2. a preheated layer is answered from the memory tier
    mark=$(berth_log_mark)
    local layer; layer=${arm64_layers%% *}
    curl -s -m 30 -o "$E2E_DIR/j-layer" "$BERTH_URL/v2/library/pre/blobs/$layer?ns=registry.test"
    if [ "$(sha256_of <"$E2E_DIR/j-layer")" = "$layer" ] &&
        berth_log_since "$mark" | grep -F "${layer#sha256:}" | grep -q 'tier="memory"'; then
        pass "j: a preheated layer is served from the memory tier"
    else
        fail "j: a preheated layer is served from the memory tier" "$(berth_lines "$mark" "${layer#sha256:}" 3)"
    fi

    # 3. honesty: a layer missing upstream fails the job, the rest is cached
    f="$E2E_DIR/preheat-broken.json"
    body=$(preheat_wait '{"images": ["library/broken:1"]}')
    code=$(tail -n1 <<<"$body"); sed '$d' <<<"$body" >"$f"
    if [ "${code:0:1}" != 2 ]; then pass "j: a job with a missing layer answers non-2xx with wait=true ($code)"
    else fail "j: a job with a missing layer answers non-2xx with wait=true" "status $code"; fi
    run_check "j: status: failed, that layer failed with the upstream error, every other blob cached" status_check "$f" "
assert s['state'] == 'failed', s['state']
bad = [i for i in items if i['digest'] == '$broken_layer']
assert len(bad) == 1 and bad[0]['state'] == 'failed' and bad[0]['error'], bad
assert bad[0]['tiers'] == [], bad
for i in items:
    if i['digest'] != '$broken_layer':
        assert i['state'] == 'cached' and 'disk' in i['tiers'], i
"

    # 4. the CLI: progress and summary, exit codes
    local out rc
    out=$("$BERTH_BIN" preheat --admin "$ADMIN_URL" --platform linux/arm64 registry.test/library/pre:1 2>&1); rc=$?
    if [ "$rc" = 0 ] && grep -q '^registry.test/library/pre:1 .* 5/5 ' <<<"$out" && grep -q 'succeeded' <<<"$out"; then
        pass "j: berth preheat prints the summary and exits 0"
    else fail "j: berth preheat prints the summary and exits 0" "exit $rc" "$out"; fi
    out=$("$BERTH_BIN" preheat --admin "$ADMIN_URL" library/broken:1 2>&1); rc=$?
    if [ "$rc" = 1 ] && grep -qF "layer $broken_layer" <<<"$out"; then
        pass "j: berth preheat exits 1 and names the failed layer"
    else fail "j: berth preheat exits 1 and names the failed layer" "exit $rc" "$out"; fi

    # 5. upstream gone: containerd pulls the preheated tag, through hosts.toml files written by
    # `berth hosts-toml`; the other platform never left upstream
    local gen="$E2E_DIR/certs-generated"
    "$BERTH_BIN" hosts-toml --mirror "$BERTH_URL" --registry registry.test --dir "$gen" >/dev/null ||
        { fail "j: berth hosts-toml writes the files"; return; }
    stop_upstream
    stop_containerd
    start_containerd j || { fail "j: fresh containerd starts"; return; }
    run_check "j: fresh containerd pulls registry.test/library/pre:1 linux/arm64 through generated hosts.toml, upstream down" \
        ctr_e2e images pull --platform linux/arm64 --hosts-dir "$gen" registry.test/library/pre:1
    local d n=0
    for d in $amd64_blobs; do n=$((n + $(count_upstream_blob_gets "$d"))); done
    if [ "$n" = 0 ]; then pass "j: no blob of linux/amd64 was requested from upstream"
    else fail "j: no blob of linux/amd64 was requested from upstream" "$n GETs"; fi
}
