# shellcheck shell=bash
# q. Clients that send no `ns` reach a registry other than the default by a path prefix:
# docker pulls 127.0.0.1:PORT/registry.test/..., skopeo inspects one, podman mirrors
# registry.test to BERTH/registry.test through registries.conf, oras-py pulls an artifact by
# the prefix. Sourced by run.sh.

prefix_skopeo() {
    local got
    got=$(timeout 60 skopeo inspect --raw --tls-verify=false \
        "docker://$BERTH_ADDR/registry.test/library/multi:1" | sha256_of) || return 1
    [ "$got" = "$MULTI_DIGEST" ] || { echo "via the prefix: $got, upstream: $MULTI_DIGEST"; return 1; }
}

prefix_docker() {
    local ref="$BERTH_ADDR/registry.test/library/single:1" id
    docker rmi -f "$ref" >/dev/null 2>&1 || true
    timeout 180 docker pull "$ref" || return 1
    id=$(docker_image_id "$ref")
    [ "$id" = "$SINGLE_CONFIG" ] || { echo "image id $id != config digest $SINGLE_CONFIG"; return 1; }
}

prefix_podman() {
    local d="$E2E_DIR/podman" got
    mkdir -p "$d"
    # The primary is a closed port: a pull that works came through the mirror.
    cat >"$d/registries.conf" <<CONF
[[registry]]
prefix = "registry.test"
location = "127.0.0.1:9"
[[registry.mirror]]
location = "$BERTH_ADDR/registry.test"
insecure = true
CONF
    local pm=(podman --root "$d/root" --runroot "$d/run" --storage-driver vfs --registries-conf "$d/registries.conf")
    timeout 180 "${pm[@]}" pull -q registry.test/library/multi:1 || return 1
    got=$("${pm[@]}" image inspect --format '{{.Digest}}' registry.test/library/multi:1) || return 1
    [ "$got" = "$MULTI_DIGEST" ] || { echo "podman: $got, upstream: $MULTI_DIGEST"; return 1; }
}

# oras-py pushes a one-file artifact to upstream, then pulls it through the prefix.
prefix_oras() {
    local d="$E2E_DIR/oras" got
    rm -rf "$d"; mkdir -p "$d/out"
    head -c 300000 /dev/urandom >"$d/artifact.bin"
    (cd "$d" && timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" push "$UP_ADDR/library/artifact:1" artifact.bin) >/dev/null || return 1
    got=$(timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" pull "$BERTH_ADDR/registry.test/library/artifact:1" "$d/out") || return 1
    cmp -s "$d/artifact.bin" "$d/out/artifact.bin" || { echo "oras pulled: $got; not the bytes pushed"; return 1; }
    [ "$(count_upstream_blob_gets "$(sha256_of <"$d/artifact.bin")")" -ge 1 ] || { echo "no upstream GET: not pulled through berth"; return 1; }
}

# A helm chart as helm pushes and pulls one (an OCI artifact with helm's config and layer
# media types; helm itself has no Debian package), through the prefix.
HELM_CONFIG=application/vnd.cncf.helm.config.v1+json
HELM_CHART=application/vnd.cncf.helm.chart.content.v1.tar+gzip
prefix_helm_chart() {
    local d="$E2E_DIR/helm" got config
    rm -rf "$d"; mkdir -p "$d/out"
    head -c 50000 /dev/urandom >"$d/app-1.2.3.tgz"
    echo '{"name":"app","version":"1.2.3","apiVersion":"v2"}' >"$d/Chart.json"
    (cd "$d" && timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" push "$UP_ADDR/library/charts/app:1.2.3" \
        "app-1.2.3.tgz:$HELM_CHART" "Chart.json:$HELM_CONFIG") >/dev/null || return 1
    config=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "$BERTH_URL/v2/registry.test/library/charts/app/manifests/1.2.3" | python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["mediaType"])') || return 1
    [ "$config" = "$HELM_CONFIG" ] || { echo "config media type through berth: $config"; return 1; }
    got=$(timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" pull "$BERTH_ADDR/registry.test/library/charts/app:1.2.3" "$d/out") || return 1
    cmp -s "$d/app-1.2.3.tgz" "$d/out/app-1.2.3.tgz" || { echo "pulled: $got; not the chart pushed"; return 1; }
}

# A signature by the tag schema (what cosign finds when a registry has no referrers API, as
# distribution 2.8): an artifact tagged sha256-<hex>.sig of the artifact above, pulled through
# the prefix; then (upstream stopped by scenario_q) pulled again: a policy that needs it
# verifies offline.
prefix_signature() {
    local d="$E2E_DIR/oras" subject sig
    subject=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "$UP_URL/v2/library/artifact/manifests/1" | sha256_of) || return 1
    sig="sha256-${subject#sha256:}.sig"
    echo "$sig" >"$d/sig.tag"
    echo "signature of $subject" >"$d/signature.txt"
    (cd "$d" && timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" push "$UP_ADDR/library/artifact:$sig" signature.txt) >/dev/null || return 1
    pull_signature
}

pull_signature() {
    local d="$E2E_DIR/oras" sig
    sig=$(cat "$d/sig.tag") || return 1
    rm -rf "$d/sig"; mkdir -p "$d/sig"
    timeout 60 python3 "$E2E_ROOT/e2e/oci_artifact.py" pull "$BERTH_ADDR/registry.test/library/artifact:$sig" "$d/sig" || return 1
    cmp -s "$d/signature.txt" "$d/sig/signature.txt" || { echo "the signature pulled is not the one pushed"; return 1; }
}

scenario_q() {
    local mark; mark=$(berth_log_mark)
    run_check "q: skopeo inspect $BERTH_ADDR/registry.test/library/multi:1 (path prefix, no ns) = upstream digest" prefix_skopeo
    if [ -z "${DOCKERD_PID:-}" ] || ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        start_dockerd "$BERTH_URL" || { fail "q: dockerd starts"; return; }
    fi
    run_check "q: docker pull $BERTH_ADDR/registry.test/library/single:1; image id = config digest" prefix_docker
    if command -v podman >/dev/null; then
        run_check "q: podman pull registry.test/library/multi:1, mirrored to $BERTH_ADDR/registry.test" prefix_podman
    else
        fail "q: podman pull through a path-prefix mirror" "podman missing (Debian package podman)"
    fi
    if python3 -c "import oras.client" 2>/dev/null; then
        run_check "q: oras pull $BERTH_ADDR/registry.test/library/artifact:1 (an OCI artifact) = the bytes pushed" prefix_oras
        run_check "q: a helm chart (helm's media types) pulled by the prefix = the chart pushed" prefix_helm_chart
        run_check "q: a tag-schema signature (sha256-<hex>.sig) of that artifact pulled through berth" prefix_signature
        stop_upstream
        run_check "q: the same signature pulled with upstream stopped" pull_signature
        start_upstream >/dev/null 2>&1 || fail "q: upstream starts again"
    else
        fail "q: oras pull through a path prefix" "oras-py missing (pip install oras)"
    fi
    run_check "q: berth log names registry.test on every prefixed request" ns_ok "$mark" registry.test/library registry.test
}
