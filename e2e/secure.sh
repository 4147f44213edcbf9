# shellcheck shell=bash
# Scenario n: berth with TLS and client authentication, pulled by containerd that trusts a
# private CA through hosts.toml (`ca = ...`) and logs in with --user. Sourced by run.sh;
# uses its helpers.
#
# Without credentials the pull is refused; with them it completes. After the certificate
# files are replaced by another certificate of the same CA and berth gets SIGHUP, new
# connections present the new certificate and pulls go on.

SECURE_ADDR="127.0.0.1:15056"
SECURE_ADMIN="127.0.0.1:15057"
SECURE_DIR="$E2E_DIR/secure"
SECURE_CERTS="$E2E_DIR/certs-secure"

make_ca_and_certs() {
    mkdir -p "$SECURE_DIR"
    cd "$SECURE_DIR" || return 1
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=berth e2e CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || return 1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >ext.cnf
    local n
    for n in 1 2; do
        openssl req -newkey rsa:2048 -nodes -keyout "srv$n.key" -out "srv$n.csr" -subj "/CN=localhost" 2>/dev/null &&
            openssl x509 -req -in "srv$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "srv$n.pem" -days 2 \
                -extfile ext.cnf 2>/dev/null || return 1
    done
    cd - >/dev/null || return 1
}

# presented_fingerprint: SHA-256 fingerprint of the certificate berth presents now
presented_fingerprint() {
    openssl s_client -connect "$SECURE_ADDR" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256
}

secure_pull() {  # secure_pull IMAGE [USER:PASSWORD [ARGS...]]
    local image=$1 user=${2:-}
    shift; shift 2>/dev/null || true
    ctr_e2e images pull --hosts-dir "$SECURE_CERTS" ${user:+--user "$user"} "$@" "$image"
}

secure_pull_single() {
    secure_pull secure.test/library/single:1 'alice:open sesame' && in_content_store "$SINGLE_DIGEST" $SINGLE_LAYERS
}

scenario_n() {
    if [ "$E2E_MIRROR" != berth ]; then pass "n: skipped (berth's TLS and auth)"; return; fi
    make_ca_and_certs || { fail "n: CA and certificates with openssl"; return; }
    cp "$SECURE_DIR/srv1.pem" "$SECURE_DIR/tls.crt"; cp "$SECURE_DIR/srv1.key" "$SECURE_DIR/tls.key"
    echo 'open sesame' | "$BERTH_BIN" htpasswd alice >"$SECURE_DIR/htpasswd" || { fail "n: berth htpasswd"; return; }
    cat >"$SECURE_DIR/berth.toml" <<TOML
[server]
listen = "$SECURE_ADDR"
admin_listen = "$SECURE_ADMIN"
default_registry = "secure.test"
tls_cert_file = "$SECURE_DIR/tls.crt"
tls_key_file = "$SECURE_DIR/tls.key"

[storage]
dir = "$SECURE_DIR/data"

[auth]
htpasswd_file = "$SECURE_DIR/htpasswd"

[[registry]]
host = "secure.test"
endpoint = "$UP_URL"
TOML
    start_upstream 2>/dev/null || true
    "$BERTH_BIN" serve --config "$SECURE_DIR/berth.toml" >>"$SECURE_DIR/berth.log" 2>&1 &
    local pid=$!
    _track "$pid"
    wait_for_http "http://$SECURE_ADMIN/healthz" 30 || { fail "n: berth with TLS starts" "$(tail -n 5 "$SECURE_DIR/berth.log")"; return; }
    mkdir -p "$SECURE_CERTS/secure.test"
    cat >"$SECURE_CERTS/secure.test/hosts.toml" <<TOML
server = "https://127.0.0.1:9"

[host."https://localhost:${SECURE_ADDR##*:}"]
  capabilities = ["pull", "resolve"]
  ca = "$SECURE_DIR/ca.pem"
TOML
    start_containerd secure || { fail "n: containerd starts"; return; }

    local out
    if out=$(secure_pull secure.test/library/single:1 2>&1); then
        fail "n: without credentials the pull is refused" "$(tail -n 3 <<<"$out")"
    else
        pass "n: without credentials the pull is refused"
    fi
    run_check "n: containerd pulls over TLS (CA from hosts.toml) with --user" secure_pull_single
    local before after want
    before=$(presented_fingerprint)
    want=$(openssl x509 -in "$SECURE_DIR/srv2.pem" -noout -fingerprint -sha256)
    cp "$SECURE_DIR/srv2.pem" "$SECURE_DIR/tls.crt"; cp "$SECURE_DIR/srv2.key" "$SECURE_DIR/tls.key"
    kill -HUP "$pid"
    sleep 1
    after=$(presented_fingerprint)
    if [ "$after" = "$want" ] && [ "$before" != "$after" ] && kill -0 "$pid" 2>/dev/null &&
        secure_pull secure.test/library/multi:1 'alice:open sesame' --platform linux/arm64 >/dev/null 2>&1; then
        pass "n: SIGHUP swaps the certificate; containerd pulls on with the new one"
    else
        fail "n: SIGHUP swaps the certificate; containerd pulls on with the new one" \
            "before $before" "after  $after" "want   $want" "$(tail -n 3 "$SECURE_DIR/berth.log")"
    fi
    stop_containerd
}
