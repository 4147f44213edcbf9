# shellcheck shell=bash
# Scenario k: GC with real parts. Sourced by run.sh; uses its helpers.
#
# A berth with 96 MiB of disk, a 1 s in-use window and docker.io/library/gc1:1 pinned; five
# ~24 MiB images pulled through containerd one after another; gc5:1 pushed again with new
# content and pulled again. Then: usage within capacity; the pinned image and the new gc5
# pull with the upstream stopped; the least recently pulled unpinned image (gc2) and the
# superseded gc5 are gone; a restart shows the same /api/v1/cache figures.

GC_CAPACITY=$((96 * 1024 * 1024))

cache_json() { curl -sf -m 10 "http://$ADMIN_ADDR/api/v1/cache"; }

# cache_check FILE PYTHON: assertions with `c` = the /api/v1/cache JSON, `digests` = its images
cache_check() {
    json_check "$1" $'c = j\ndigests = {i["digest"]: i for i in c["images"]}\n'"$2"
}

fetch_gc() { ctr_e2e content fetch --hosts-dir "$CERTS" "docker.io/library/$1:1" >/dev/null; }

scenario_k() {
    if [ "$E2E_MIRROR" != berth ]; then pass "k: skipped (GC is berth's)"; return; fi
    start_upstream || { fail "k: upstream starts"; return; }
    local n
    for n in 1 2 3 4 5; do make_and_push single "gc$n" 1 24M || { fail "k: push gc$n:1"; return; }; done
    local gc2 gc5_old gc5_new
    gc2=$(get_manifest "$UP_URL" library/gc2 1 | sha256_of)
    gc5_old=$(get_manifest "$UP_URL" library/gc5 1 | sha256_of)

    stop_berth
    BERTH_DATA="$E2E_DIR/berth-gc" BERTH_DISK_CAPACITY=96MiB BERTH_TAG_TTL=1s \
        BERTH_EXTRA_TOML=$'[gc]\ninterval = "1s"\nin_use_window = "1s"\n\n[[pin]]\nimage = "docker.io/library/gc1:1"' \
        start_berth || { fail "k: berth with 96 MiB of disk starts"; return; }
    stop_containerd
    start_containerd k || { fail "k: fresh containerd starts"; return; }

    local ok=1
    for n in 1 2 3 4 5; do
        fetch_gc "gc$n" || { ok=0; log "fetch gc$n failed"; }
        sleep 2 # older than the in-use window before the next pull
    done
    rm -rf "$E2E_DIR/img-gc5-1"
    make_and_push single gc5 1 24M || { fail "k: push gc5:1 again"; return; }
    gc5_new=$(get_manifest "$UP_URL" library/gc5 1 | sha256_of)
    fetch_gc gc5 || ok=0
    if [ "$ok" = 1 ] && [ "$gc5_new" != "$gc5_old" ]; then pass "k: containerd pulled five images and gc5:1's new version"
    else fail "k: containerd pulled five images and gc5:1's new version" "$(tail -n 5 "$BERTH_LOG" | cut -c1-300)"; fi

    local report; report=$(curl -sf -m 60 -X POST "http://$ADMIN_ADDR/api/v1/gc") || report=
    log "gc pass: $(head -c 400 <<<"$report")"
    local before="$E2E_DIR/cache-before.json"
    cache_json >"$before" || { fail "k: GET /api/v1/cache"; return; }
    run_check "k: usage within capacity; gc1 (pinned) and the new gc5 kept; gc2 and the superseded gc5 gone" \
        cache_check "$before" "
assert c['disk']['used'] <= $GC_CAPACITY, c['disk']
assert c['disk']['capacity'] == $GC_CAPACITY, c['disk']
pinned = [i for i in c['images'] if i['pinned']]
assert any('docker.io/library/gc1:1' in i['tags'] for i in pinned), 'gc1 not kept as pinned'
assert '$gc5_new' in digests, 'the new gc5 version is gone'
assert '$gc2' not in digests, 'gc2, the least recently pulled, was kept'
assert '$gc5_old' not in digests, 'the superseded gc5 was kept'
"

    stop_upstream
    stop_containerd
    start_containerd k2 || { fail "k: fresh containerd starts"; return; }
    run_check "k: the pinned gc1:1 pulls with the upstream stopped" \
        ctr_e2e images pull --hosts-dir "$CERTS" docker.io/library/gc1:1
    run_check "k: the new gc5:1 pulls with the upstream stopped" \
        ctr_e2e images pull --hosts-dir "$CERTS" docker.io/library/gc5:1

    stop_berth
    BERTH_DATA="$E2E_DIR/berth-gc" BERTH_DISK_CAPACITY=96MiB BERTH_TAG_TTL=1s \
        BERTH_EXTRA_TOML=$'[gc]\ninterval = "1s"\nin_use_window = "1s"\n\n[[pin]]\nimage = "docker.io/library/gc1:1"' \
        start_berth || { fail "k: berth restarts"; return; }
    local after="$E2E_DIR/cache-after.json"
    cache_json >"$after" || { fail "k: GET /api/v1/cache after restart"; return; }
    run_check "k: after a restart /api/v1/cache shows the same usage and images" python3 - "$before" "$after" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
key = lambda c: sorted((i["digest"], i["size"], i["pinned"]) for i in c["images"])
if a["disk"] != b["disk"] or key(a) != key(b):
    print("before:", a["disk"], key(a)); print("after: ", b["disk"], key(b)); sys.exit(1)
PY
}
