# shellcheck shell=bash
# Scenario o: a fleet on one bucket. SeaweedFS (`weed server -s3`) is the bucket;
# distribution is the upstream; berths that do not peer with each other ("two clusters"),
# each with its own containerd. Sourced by run.sh; uses its helpers.
#
# 1. A pulls an image: its blobs and manifest land in the bucket. 2. B, another cluster,
# pulls it: every blob was GET from upstream once in all; both pull a new image at once: the
# fleet lease lets one of them fetch each blob; 2d. two that share the peer token: the loser
# streams from the winner's fill in flight. 3. Upstream stopped, a fresh berth
# with an empty disk pulls it by tag (the fleet's tag mapping) and by digest from the bucket. 4. A layer overwritten with wrong
# bytes in the bucket: a fresh berth's pull still verifies, and the object is replaced. 4b.
# The layer with its part checksums and one wrong byte: the rest comes from upstream. 4c.
# Every bucket body cut once (a fault proxy): resumed from the bucket. 5. SeaweedFS killed while a fresh berth reads a large layer from it (through a throttling
# proxy): the pull completes from upstream.

WEED_S3_PORT=15093
WEED_S3="http://127.0.0.1:$WEED_S3_PORT"
WEED_PROXY_PORT=15094
UP_PROXY_PORT=15095
WEED_BUCKET=berth-e2e
WEED_PID=
BUCKET_PIDS=()

start_weed() {
    local w="$E2E_DIR/weed"
    mkdir -p "$w/data"
    cat >"$w/s3.json" <<EOF
{"identities":[{"name":"berth","credentials":[{"accessKey":"berthkey","secretKey":"berthsecret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
    weed server -dir="$w/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=15090 \
        -volume.port=15091 -filer -filer.port=15092 -s3 -s3.port=$WEED_S3_PORT \
        -s3.config="$w/s3.json" >"$w/weed.log" 2>&1 &
    WEED_PID=$!
    _track "$WEED_PID"
    local i
    for ((i = 0; i < 300; i++)); do
        s3 -X PUT "$WEED_S3/$WEED_BUCKET" -o /dev/null 2>/dev/null && return 0
        sleep 0.2
    done
    log "SeaweedFS did not take a bucket"; tail -n 20 "$w/weed.log" >&2
    return 1
}

# SeaweedFS ignores SIGTERM for a while: stopped with SIGKILL.
kill_weed() { [ -n "$WEED_PID" ] && kill -9 "$WEED_PID" 2>/dev/null; wait "$WEED_PID" 2>/dev/null; WEED_PID=; }

# s3 CURL-ARGS...: a signed request to SeaweedFS's S3 API
s3() { curl -sf -m 30 --aws-sigv4 "aws:amz:us-east-1:s3" --user berthkey:berthsecret "$@"; }

object_url() { echo "$WEED_S3/$WEED_BUCKET/fleet/v1/$1/sha256/${2#sha256:}"; }

# start_bucket_berth I [ENDPOINT] [UPLOAD] [UPSTREAM] [fleet]: berth I on 127.0.0.1:1507I, on
# the bucket, with no peers; with "fleet", a cluster of its own that holds the fleet's peer
# token (it signs its fill leases, and streams from holders whose leases it can verify)
start_bucket_berth() {
    local i=$1 endpoint=${2:-$WEED_S3} upload=${3:-background} upstream=${4:-$UP_URL} fleet=${5:-}
    cat >"$E2E_DIR/bucket-$i.toml" <<EOF
[server]
listen = "127.0.0.1:$((15070 + i))"
admin_listen = "127.0.0.1:$((15080 + i))"
default_registry = "bucket.test"

[storage]
dir = "$E2E_DIR/bucket-$i"
memory_capacity = "64MiB"
memory_max_object = "1MiB"
disk_capacity = "2GiB"

[[registry]]
host = "bucket.test"
endpoint = "$upstream"
connect_timeout = "1s"

[bucket]
url = "s3://$WEED_BUCKET/fleet"
endpoint = "$endpoint"
access_key_id_env = "BERTH_E2E_S3_KEY"
secret_access_key_env = "BERTH_E2E_S3_SECRET"
upload = "$upload"
EOF
    if [ "$fleet" = fleet ]; then cat >>"$E2E_DIR/bucket-$i.toml" <<EOF

[peers]
self = "http://127.0.0.1:$((15070 + i))"
static = ["http://127.0.0.1:$((15070 + i))"]
token_env = "BERTH_E2E_PEER_TOKEN"
EOF
    fi
    BERTH_E2E_PEER_TOKEN=fleet-e2e-token BERTH_E2E_S3_KEY=berthkey BERTH_E2E_S3_SECRET=berthsecret \
        "$BERTH_BIN" serve --config "$E2E_DIR/bucket-$i.toml" >>"$E2E_DIR/bucket-$i.log" 2>&1 &
    BUCKET_PIDS[i]=$!
    _track "${BUCKET_PIDS[i]}"
    wait_for_http "http://127.0.0.1:$((15080 + i))/healthz" 30 || return 1
    start_containerd "bucket-$i" || return 1
    write_hosts_toml "$E2E_DIR/certs-bucket-$i" bucket.test "https://127.0.0.1:9" "http://127.0.0.1:$((15070 + i))"
    eval "BUCKET_SOCK_$i=\$CTD_SOCK"
}

# bucket_pull I REF: containerd I pulls REF through berth I
bucket_pull() {
    local sock; eval "sock=\$BUCKET_SOCK_$1"
    timeout 180 ctr -a "$sock" -n e2e images pull --hosts-dir "$E2E_DIR/certs-bucket-$1" "$2" \
        >"$E2E_DIR/pull-bucket-$1.log" 2>&1 || { tail -n 3 "$E2E_DIR/pull-bucket-$1.log"; return 1; }
}

# in_bucket KIND DIGEST...: each object is in the bucket and matches its digest (10 s to appear)
in_bucket() {
    local kind=$1 d i; shift
    for d in "$@"; do
        for ((i = 0; i < 50; i++)); do
            [ "$(s3 "$(object_url "$kind" "$d")" | sha256_of)" = "$d" ] && continue 2
            sleep 0.2
        done
        echo "$kind $d is not in the bucket as its digest says"; return 1
    done
}

# metric I NAME-AND-LABELS: the value berth I reports, 0 when absent
metric() {
    curl -sf -m 10 "http://127.0.0.1:$((15080 + $1))/metrics" | grep -F "$2" | awk '{s += $2} END {print s + 0}'
}

scenario_o() {
    if [ "$E2E_MIRROR" != berth ]; then pass "o: skipped (the bucket is berth's)"; return; fi
    command -v weed >/dev/null || { fail "o: weed (SeaweedFS) is installed (test.sh installs it)"; return; }
    local saved_sock=${CTD_SOCK:-} saved_pid=${CTD_PID:-}
    start_upstream 2>/dev/null || true
    start_weed || { fail "o: SeaweedFS starts and takes a bucket"; return; }
    local i
    for i in 0 1; do
        start_bucket_berth "$i" || { fail "o: berth $i on the bucket starts" "$(tail -n 5 "$E2E_DIR/bucket-$i.log")"; return; }
    done
    make_and_push single fleet 1 6M 3M 1M || { fail "o: push fleet:1"; return; }
    local m="$E2E_DIR/fleet.manifest" digest blobs out
    get_manifest "$UP_URL" library/fleet 1 >"$m" || { fail "o: manifest of fleet:1"; return; }
    digest=$(sha256_of <"$m")
    blobs="$(manifest_field config <"$m") $(manifest_field layers <"$m" | tr '\n' ' ')"

    # 1 and 2: A pulls and uploads; B, which does not peer with A, pulls from the bucket
    # shellcheck disable=SC2086
    if out=$(bucket_pull 0 bucket.test/library/fleet:1 && in_bucket blobs $blobs && in_bucket manifests "$digest" &&
        bucket_pull 1 bucket.test/library/fleet:1 && once_upstream $blobs 2>&1); then
        pass "o: two berths that do not peer pull one image through one bucket; each blob GET from upstream once"
    else
        fail "o: two berths that do not peer pull one image through one bucket; each blob GET from upstream once" "$out"
    fi

    # 2b: A and B pull a new image at the same moment: the fleet lease lets one fetch each blob
    make_and_push single fleet 3 8M 4M || { fail "o: push fleet:3"; return; }
    local m3="$E2E_DIR/fleet3.manifest" blobs3
    get_manifest "$UP_URL" library/fleet 3 >"$m3"
    blobs3="$(manifest_field config <"$m3") $(manifest_field layers <"$m3" | tr '\n' ' ')"
    bucket_pull 0 bucket.test/library/fleet:3 >"$E2E_DIR/race-0.out" 2>&1 &
    local race=$! one=0 other=0
    bucket_pull 1 bucket.test/library/fleet:3 >"$E2E_DIR/race-1.out" 2>&1 || one=$?
    wait "$race" || other=$?
    # shellcheck disable=SC2086
    if out=$([ "$one$other" = 00 ] && once_upstream $blobs3 2>&1); then
        pass "o: two berths that do not peer pull a new image at once; the fleet lease lets one fetch each blob"
    else
        fail "o: two berths that do not peer pull a new image at once; the fleet lease lets one fetch each blob" "$out" \
            "pulls exited $one and $other" "$(cat "$E2E_DIR/race-0.out" "$E2E_DIR/race-1.out")"
    fi

    # 2c: preheat with the bucket tier on B: every blob uploaded, and the status says so
    make_and_push single fleet 4 2M 1M || { fail "o: push fleet:4"; return; }
    local m4="$E2E_DIR/fleet4.manifest" blobs4 status="$E2E_DIR/preheat-bucket.json"
    get_manifest "$UP_URL" library/fleet 4 >"$m4"
    blobs4="$(manifest_field config <"$m4") $(manifest_field layers <"$m4" | tr '\n' ' ')"
    curl -s -m 60 -o "$status" -H 'Content-Type: application/json' \
        -d '{"images": ["bucket.test/library/fleet:4"], "tiers": ["disk", "bucket"]}' \
        "http://127.0.0.1:15081/api/v1/preheat?wait=true"
    # shellcheck disable=SC2086
    if out=$(json_check "$status" 'assert j["state"] == "succeeded", j["state"]
items = [i for im in j["images"] for i in im["items"]]
assert any(i["kind"] == "manifest" for i in items), [i["kind"] for i in items]
assert all("bucket" in i["tiers"] for i in items), [(i["kind"], i["tiers"]) for i in items]' &&
        in_bucket blobs $blobs4 && in_bucket manifests "$(sha256_of <"$m4")" 2>&1); then
        pass "o: preheat with the bucket tier uploads every blob and the manifest, and its status says bucket"
    else
        fail "o: preheat with the bucket tier uploads every blob and the manifest, and its status says bucket" "$out"
    fi

    # 2d: two berths in clusters of their own that share the peer token, upstream throttled:
    # the one that loses the fleet lease streams the layer from the winner's fill in flight
    # instead of waiting for its upload, and upstream is asked once
    make_and_push single fleet 5 16M || { fail "o: push fleet:5"; return; }
    local m5="$E2E_DIR/fleet5.manifest" big5 lease
    get_manifest "$UP_URL" library/fleet 5 >"$m5"
    big5=$(manifest_field layers <"$m5" | sed -n 1p)
    lease="$WEED_S3/$WEED_BUCKET/fleet/v1/fills/${big5#sha256:}"
    python3 "$E2E_SRC/faultproxy.py" "$UP_PROXY_PORT" "$UP_PORT" >"$E2E_DIR/faultproxy-up.log" 2>&1 &
    _track $!
    wait_for_port "127.0.0.1:$UP_PROXY_PORT" 10 || { fail "o: fault proxy in front of upstream"; return; }
    curl -sf "http://127.0.0.1:$UP_PROXY_PORT/__mode/throttle:4000000" >/dev/null
    for i in 7 8; do
        start_bucket_berth "$i" "$WEED_S3" background "http://127.0.0.1:$UP_PROXY_PORT" fleet ||
            { fail "o: berth $i (fleet token) starts" "$(tail -n 5 "$E2E_DIR/bucket-$i.log")"; return; }
    done
    local up5; up5=$(count_upstream_blob_gets "$big5")
    bucket_pull 7 bucket.test/library/fleet:5 >"$E2E_DIR/pull-7.out" 2>&1 &
    local winner=$! won=1 lost=1
    for ((i = 0; i < 100; i++)); do s3 -I "$lease" -o /dev/null && break; sleep 0.1; done
    bucket_pull 8 bucket.test/library/fleet:5 >"$E2E_DIR/pull-8.out" 2>&1 && lost=0
    wait "$winner" && won=0
    if [ "$won$lost" = 00 ] && [ "$(count_upstream_blob_gets "$big5")" = $((up5 + 1)) ] &&
        [ "$(metric 8 'berth_fleet_streams_total{outcome="streamed"}')" -ge 1 ] &&
        [ "$(metric 8 'berth_peer_requests_total{peer="http://127.0.0.1:15077",status="200"}')" -ge 1 ]; then
        pass "o: the berth that loses the fleet lease streams the layer from the winner's fill (shared peer token); upstream asked once"
    else
        fail "o: the berth that loses the fleet lease streams the layer from the winner's fill (shared peer token); upstream asked once" \
            "pulls exited $won and $lost; upstream GETs of the layer: $up5 then $(count_upstream_blob_gets "$big5")" \
            "streams: $(curl -sf "http://127.0.0.1:15088/metrics" | grep -E 'berth_fleet_streams|berth_peer_requests')" \
            "$(grep -i -E 'lease|holder' "$E2E_DIR/bucket-8.log" | tail -n 3)"
    fi
    for i in 7 8; do stop_pid "${BUCKET_PIDS[i]:-}"; done

    # 3: upstream stopped, a fresh berth with an empty disk pulls by digest from the bucket
    stop_upstream
    start_bucket_berth 2 || { fail "o: berth 2 starts"; return; }
    if out=$(bucket_pull 2 bucket.test/library/fleet:1 && bucket_pull 2 "bucket.test/library/fleet@$digest" 2>&1); then
        pass "o: upstream stopped, a fresh berth with an empty disk pulls the image by tag and by digest from the bucket"
    else
        fail "o: upstream stopped, a fresh berth with an empty disk pulls the image by tag and by digest from the bucket" "$out" \
            "$(tail -n 5 "$E2E_DIR/bucket-2.log")"
    fi
    start_upstream 2>/dev/null || { fail "o: upstream restarts"; return; }

    # 4: the largest layer overwritten with wrong bytes of the same length, under the same
    # registry: a fresh berth's pull still verifies, and the object is replaced
    local big; big=$(manifest_field layers <"$m" | sed -n 1p)
    head -c "$(stat -c %s "$E2E_DIR/bucket-0/v1/blobs/sha256/${big:7:2}/${big#sha256:}")" /dev/urandom >"$E2E_DIR/wrong"
    s3 -X PUT -H "x-amz-meta-registry: bucket.test" -H "x-amz-content-sha256: $(sha256sum <"$E2E_DIR/wrong" | cut -d' ' -f1)" \
        --data-binary "@$E2E_DIR/wrong" "$(object_url blobs "$big")" -o /dev/null ||
        { fail "o: overwrite a bucket object"; return; }
    start_bucket_berth 3 || { fail "o: berth 3 starts"; return; }
    if out=$(bucket_pull 3 bucket.test/library/fleet:1 && in_bucket blobs "$big" 2>&1) &&
        [ "$(metric 3 berth_bucket_corrupt_total)" -ge 1 ]; then
        pass "o: a wrong object in the bucket: the pull verifies, the object is replaced and counted"
    else
        fail "o: a wrong object in the bucket: the pull verifies, the object is replaced and counted" "$out" \
            "corrupt counted: $(metric 3 berth_bucket_corrupt_total)"
    fi

    # 4b: the same layer, as uploaded (with its part checksums), with one byte changed in its
    # second part: a fresh berth shows its clients the first part, finishes the layer from
    # upstream, and the pull verifies
    local parts wrong="$E2E_DIR/wrong-part"
    parts=$(s3 -I "$(object_url blobs "$big")" | tr -d '\r' | sed -n 's/^x-amz-meta-parts: //Ip')
    python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[5 << 20] ^= 1; open(sys.argv[2], "wb").write(b)' \
        "$E2E_DIR/bucket-0/v1/blobs/sha256/${big:7:2}/${big#sha256:}" "$wrong"
    [ -n "$parts" ] && s3 -X PUT -H "x-amz-meta-registry: bucket.test" -H "x-amz-meta-parts: $parts" \
        -H "x-amz-content-sha256: $(sha256sum <"$wrong" | cut -d' ' -f1)" \
        --data-binary "@$wrong" "$(object_url blobs "$big")" -o /dev/null ||
        { fail "o: uploads carry part checksums, and an object with a wrong part is put" "checksums: '$parts'"; return; }
    start_bucket_berth 5 || { fail "o: berth 5 starts"; return; }
    # One client GET of the layer, complete: the client did not notice (no retry).
    if out=$(bucket_pull 5 bucket.test/library/fleet:1 2>&1) && [ "$(metric 5 berth_bucket_corrupt_total)" -ge 1 ] &&
        grep -q "the rest from the source" "$E2E_DIR/bucket-5.log" &&
        [ "$(grep -c "method=GET path=[^ ]*/blobs/$big .*outcome=\"complete\"" "$E2E_DIR/bucket-5.log")" = 1 ] &&
        [ "$(grep -c "method=GET path=[^ ]*/blobs/$big " "$E2E_DIR/bucket-5.log")" = 1 ]; then
        pass "o: a wrong part in a bucket object: clients are shown the parts before it, the rest comes from upstream, the pull verifies"
    else
        fail "o: a wrong part in a bucket object: clients are shown the parts before it, the rest comes from upstream, the pull verifies" \
            "$out" "corrupt counted: $(metric 5 berth_bucket_corrupt_total)" "$(grep -i bucket "$E2E_DIR/bucket-5.log" | tail -n 3)"
    fi
    stop_pid "${BUCKET_PIDS[5]:-}"

    # 5: SeaweedFS killed while a fresh berth reads a large layer from it
    make_and_push single fleet 2 40M || { fail "o: push fleet:2"; return; }
    local m2="$E2E_DIR/fleet2.manifest" large
    get_manifest "$UP_URL" library/fleet 2 >"$m2"
    large=$(manifest_field layers <"$m2" | sed -n 1p)
    bucket_pull 0 bucket.test/library/fleet:2 >/dev/null && in_bucket blobs "$large" >/dev/null ||
        { fail "o: fleet:2 reaches the bucket"; return; }
    python3 "$E2E_SRC/faultproxy.py" "$WEED_PROXY_PORT" "$WEED_S3_PORT" keep-host >"$E2E_DIR/faultproxy-weed.log" 2>&1 &
    _track $!
    wait_for_port "127.0.0.1:$WEED_PROXY_PORT" 10 || { fail "o: fault proxy in front of SeaweedFS"; return; }
    local before; before=$(count_upstream_blob_gets "$large")

    # 4c: every bucket body cut once: a fresh berth resumes each from the same object
    curl -sf "http://127.0.0.1:$WEED_PROXY_PORT/__mode/cut-once" >/dev/null
    start_bucket_berth 6 "http://127.0.0.1:$WEED_PROXY_PORT" off || { fail "o: berth 6 starts"; return; }
    if out=$(bucket_pull 6 bucket.test/library/fleet:2 2>&1) &&
        grep -q "blobs/sha256/${large#sha256:} bytes=[0-9]*-[0-9]* 206" "$E2E_DIR/faultproxy-weed.log" &&
        [ "$(count_upstream_blob_gets "$large")" = "$before" ]; then
        pass "o: bucket bodies cut mid-read are resumed from the bucket with Range; upstream is not asked"
    else
        fail "o: bucket bodies cut mid-read are resumed from the bucket with Range; upstream is not asked" "$out" \
            "bucket requests: $(grep -c . "$E2E_DIR/faultproxy-weed.log"); upstream GETs of the layer: $before then $(count_upstream_blob_gets "$large")" \
            "$(grep -i bucket "$E2E_DIR/bucket-6.log" | tail -n 3)"
    fi
    stop_pid "${BUCKET_PIDS[6]:-}"

    curl -sf "http://127.0.0.1:$WEED_PROXY_PORT/__mode/throttle:4000000" >/dev/null
    start_bucket_berth 4 "http://127.0.0.1:$WEED_PROXY_PORT" off || { fail "o: berth 4 starts"; return; }
    before=$(count_upstream_blob_gets "$large")
    bucket_pull 4 bucket.test/library/fleet:2 >"$E2E_DIR/pull-4.out" 2>&1 &
    local pull=$!
    for ((i = 0; i < 100; i++)); do
        grep -q "blobs/sha256/${large#sha256:}" "$E2E_DIR/faultproxy-weed.log" && break
        sleep 0.1
    done
    sleep 2
    kill_weed
    if wait "$pull" && [ "$(count_upstream_blob_gets "$large")" -gt "$before" ]; then
        pass "o: SeaweedFS killed mid-read: the pull completes from upstream"
    else
        fail "o: SeaweedFS killed mid-read: the pull completes from upstream" "$(cat "$E2E_DIR/pull-4.out")" \
            "upstream GETs of the layer: $before then $(count_upstream_blob_gets "$large")" \
            "$(grep -i bucket "$E2E_DIR/bucket-4.log" | tail -n 3)"
    fi
    for i in 0 1 2 3 4; do stop_pid "${BUCKET_PIDS[i]:-}"; done
    CTD_SOCK=$saved_sock CTD_PID=$saved_pid
}
