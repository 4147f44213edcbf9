# shellcheck shell=bash
# p. A real lazy pull through berth: containerd with the stargz snapshotter (built from
# Debian's library by e2e/stargz/build.sh) mounts an eStargz image whose layer berth has
# never seen. The snapshotter reads the layer's footer, TOC and chunks with Range requests
# (sent with no `ns`: berth's default registry); berth answers each from the one fill of the
# layer as its bytes are written. Sourced by run.sh.

# lazy_image: an eStargz copy of a fresh image (one 8 MiB file in its layer), converted by
# ctr-remote in the scenario's containerd and pushed straight to upstream as library/lazy:esgz.
# Sets LAZY_LAYER (the eStargz layer's digest) and LAZY_SHA (the file's sha256).
lazy_image() {
    make_and_push single lazysrc 1 8M || return 1
    local dir="$E2E_DIR/img-lazysrc-1" layer
    layer=$(python3 -c 'import json,sys; d=sys.argv[1]; i=json.load(open(d+"/index.json"))["manifests"][0]["digest"][7:]; m=json.load(open(d+"/blobs/sha256/"+i)); print(m["layers"][0]["digest"][7:])' "$dir") || return 1
    LAZY_SHA=$(tar -xzOf "$dir/blobs/sha256/$layer" | sha256sum | cut -d' ' -f1)
    local up="$UP_ADDR/library"
    timeout 120 ctr -a "$CTD_SOCK" -n convert images pull --plain-http "$up/lazysrc:1" >/dev/null || return 1
    timeout 120 ctr-remote -a "$CTD_SOCK" -n convert image optimize --no-optimize --oci \
        "$up/lazysrc:1" "$up/lazy:esgz" >/dev/null 2>&1 || { echo "ctr-remote optimize failed"; return 1; }
    timeout 120 ctr -a "$CTD_SOCK" -n convert images push --plain-http "$up/lazy:esgz" >/dev/null || return 1
    LAZY_LAYER=$(get_manifest "$UP_URL" library/lazy esgz | manifest_field layers | head -n 1)
    [ -n "$LAZY_LAYER" ] || { echo "no layer in library/lazy:esgz"; return 1; }
}

scenario_p() {
    local name="p. lazy pull (stargz snapshotter): the image is mounted from ranges berth answers from its one fill"
    command -v ctr-remote >/dev/null || { fail "$name" "ctr-remote missing (Debian package stargz-snapshotter)"; return; }
    local driver="$E2E_DIR/stargz-driver" root="$E2E_DIR/stargz" sock="$E2E_DIR/stargz.sock"
    if ! bash "$E2E_SRC/stargz/build.sh" "$driver" >"$E2E_DIR/stargz-build.log" 2>&1; then
        fail "$name" "the stargz snapshotter did not build:" "$(tail -n 8 "$E2E_DIR/stargz-build.log")"
        return
    fi
    "$driver" -address "$sock" -root "$root" -mirror "$BERTH_ADDR" >"$E2E_DIR/stargz.log" 2>&1 &
    local driver_pid=$!
    _track "$driver_pid"
    wait_for_socket "$sock" 30 || { fail "$name" "no snapshotter socket" "$(tail -n 5 "$E2E_DIR/stargz.log")"; return; }
    stop_containerd
    start_containerd lazy "[proxy_plugins.stargz]
  type = \"snapshot\"
  address = \"$sock\"" || { fail "$name" "containerd with the stargz plugin starts"; return; }
    if ! lazy_image >"$E2E_DIR/lazy-image.log" 2>&1; then
        fail "$name" "making the eStargz image:" "$(tail -n 5 "$E2E_DIR/lazy-image.log")"
        return
    fi
    local out
    local mark; mark=$(berth_log_mark)
    if ! out=$(timeout 120 ctr-remote -a "$CTD_SOCK" -n lazy images rpull --hosts-dir "$CERTS" \
        docker.io/library/lazy:esgz 2>&1); then
        fail "$name" "rpull failed:" "$(tail -n 5 <<<"$out")" "$(tail -n 5 "$E2E_DIR/stargz.log")"
        return
    fi
    local mnt file
    mnt=$(awk -v d="$root" '$1 == "stargz" && index($2, d) == 1 {print $2}' /proc/mounts | head -n 1)
    file="$mnt/data/1-amd64-layer0.bin"
    local first=; [ -n "$mnt" ] && first=$(head -c 16 "$file" | od -An -tx1 | tr -d ' \n')
    local ranges whole got
    ranges=$(berth_log_since "$mark" | grep -F "$LAZY_LAYER" | grep -cE 'status=206' || true)
    whole=$(berth_log_since "$mark" | grep -F "$LAZY_LAYER" | grep -cE 'method=GET.*status=200' || true)
    got=$( [ -n "$mnt" ] && sha256sum <"$file" | cut -d' ' -f1)
    # One full fetch (a 200): ranges far ahead of it may be fetched on their own (206s).
    local full
    full=$(grep -cE "\"GET /v2/[^ \"]+/blobs/$LAZY_LAYER HTTP/1.1\" 200 " "$UP_LOG" || true)
    if [ -n "$mnt" ] && [ -n "$first" ] && [ "$got" = "$LAZY_SHA" ] && [ "$ranges" -ge 2 ] &&
        [ "$whole" = 0 ] && [ "$full" = 1 ]; then
        pass "$name ($ranges ranges)"
    else
        fail "$name" "mount: ${mnt:-none}; file sha256 ${got:-none} (want $LAZY_SHA)" \
            "206 answers for the layer: $ranges, whole GETs: $whole, full upstream GETs: $full" \
            "$(berth_log_since "$mark" | grep -F "$LAZY_LAYER" | tail -n 4)" "$(tail -n 4 "$E2E_DIR/stargz.log")"
    fi
    stop_containerd
    stop_pid "$driver_pid" 20
}

# multipart_parts FILE CONTENT_TYPE: each part of a multipart/byteranges body as
# "<Content-Range> <sha256 of its bytes>", one per line, in the order sent
multipart_parts() {
    python3 - "$1" "$2" <<'PY'
import email.parser, hashlib, sys
body, ctype = open(sys.argv[1], "rb").read(), sys.argv[2]
msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
assert msg.is_multipart(), ctype
for part in msg.get_payload():
    print(part["Content-Range"], hashlib.sha256(part.get_payload(decode=True)).hexdigest())
PY
}

# p2. the same ranges in one request: berth's multipart answer carries the parts distribution's has
scenario_p2() {
    local name="p2. several ranges in one request: multipart/byteranges with the parts distribution sends"
    [ -n "${LAZY_LAYER:-}" ] || { fail "$name" "no eStargz layer (scenario p did not run)"; return; }
    local ask="bytes=0-99,4000000-4000099,-100" path="library/lazy/blobs/$LAZY_LAYER" b u
    b=$(curl -s -m 30 -H "Range: $ask" -o "$E2E_DIR/multi.berth" -w '%{http_code} %{content_type}' "$BERTH_URL/v2/$path")
    u=$(curl -s -m 30 -H "Range: $ask" -o "$E2E_DIR/multi.up" -w '%{http_code} %{content_type}' "$UP_URL/v2/$path")
    local bp up
    bp=$(multipart_parts "$E2E_DIR/multi.berth" "${b#* }" 2>&1)
    up=$(multipart_parts "$E2E_DIR/multi.up" "${u#* }" 2>&1)
    if [ "${b%% *}" = 206 ] && [ "${u%% *}" = 206 ] && [ "$(wc -l <<<"$bp")" = 3 ] && [ "$bp" = "$up" ]; then
        pass "$name"
    else
        fail "$name" "berth: $b" "$bp" "distribution: $u" "$up"
    fi
}
