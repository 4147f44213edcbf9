//! The trust boundary, tried as an attacker would: one test per attack, each named for it.
//! Requests that claim trust they do not have, upstreams that redirect inward or lie about
//! lengths, clients that hold connections open, and registries that try to read each other's
//! content. Each test fails if the guard it names is missing.

mod common;

use std::time::Duration;

use common::{bytes_of, Harness};
use http::StatusCode;

const REPO: &str = "library/app";

/// `[peers]` for tests: one unreachable peer, short timeouts, this token.
fn peers_with_token(token: &str) -> berth::config::Peers {
    berth::config::Peers {
        self_url: url::Url::parse("http://127.0.0.1:1").unwrap(),
        static_peers: vec![url::Url::parse("http://127.0.0.1:2").unwrap()],
        dns: None,
        dns_interval: Duration::from_secs(30),
        timeout: Duration::from_millis(200),
        read_timeout: Duration::from_secs(2),
        backoff: Duration::from_secs(30),
        token: berth::config::Secret::new(token),
    }
}

/// A berth whose registry API takes only the bearer token "t0k3n".
async fn with_client_auth(tweak: impl FnOnce(&mut berth::config::Config)) -> (Harness, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("tokens"), "t0k3n\n").unwrap();
    let tokens = files.path().join("tokens");
    let h = Harness::start_with("", |c| {
        c.auth = Some(berth::config::Auth { htpasswd_file: None, tokens_file: Some(tokens) });
        tweak(c);
    })
    .await;
    (h, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_marker_alone_does_not_get_past_client_auth() {
    let (h, _files) = with_client_auth(|_| {}).await;
    let d = h.upstream.add_blob(bytes_of(1000, 1));
    let blob = h.url(&Harness::blob_path(REPO, &d));
    for hop in ["1", "http://127.0.0.1:1", ""] {
        let r = h.client.get(&blob).header("x-berth-hop", hop).send().await.unwrap();
        assert!(r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::UNAUTHORIZED, "{hop:?}");
        assert!(r.text().await.unwrap().contains("\"code\""), "an OCI error body");
    }
    // A peer token where no [peers] is configured is no credential either.
    let r = h.client.get(&blob).header("x-berth-peer-token", "").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.upstream.count(http::Method::GET, d.as_str()), 0, "nothing was fetched for them");
    let r = h.client.get(&blob).bearer_auth("t0k3n").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_cannot_pin_images_through_the_peer_api() {
    let h = Harness::start_with("", |c| c.peers = Some(peers_with_token("peer-s3cret"))).await;
    let (_, _) = h.upstream.put_image(REPO, "v1", &[bytes_of(1000, 2)]);
    let body = serde_json::json!({ "images": [format!("docker.io/{REPO}:v1")], "pin": true });
    let submit = |token: Option<&str>| {
        let mut req = h.client.post(h.url("/berth/v1/preheat")).header("x-berth-hop", "x").json(&body);
        if let Some(t) = token {
            req = req.header("x-berth-peer-token", t);
        }
        req.send()
    };
    for bad in [None, Some(""), Some("guess")] {
        let r = submit(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad:?}");
    }
    // Without the hop marker too.
    let r = h.client.post(h.url("/berth/v1/preheat")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let pins = h.berth.mirror.store.meta.pins().unwrap();
    assert!(pins.is_empty(), "an outsider pinned {pins:?}");
    assert_eq!(submit(Some("peer-s3cret")).await.unwrap().status(), StatusCode::ACCEPTED);
}

#[test]
fn peers_without_a_token_are_refused_by_validation() {
    let err = berth::config::Config::parse(
        "[peers]\nself = \"http://10.0.0.1:5000\"\nstatic = [\"http://10.0.0.2:5000\"]\n\
         [[registry]]\nhost = \"docker.io\"\nendpoint = \"https://registry-1.docker.io\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("token_file or token_env"), "{err}");
}

/// A berth whose one registry is public-only (as the wildcard's hosts are) but may reach its
/// fake upstream on loopback; every other non-public address is refused.
async fn public_only() -> Harness {
    let upstream = common::Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[("docker.io", &upstream.url())], "");
    cfg.registries[0].public_only = true;
    cfg.registries[0].public_exempt = vec![upstream.addr];
    let berth = berth::Server::start(&cfg).await.unwrap();
    Harness { dir, upstream, berth, client: reqwest::Client::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_internal_addresses_are_refused_for_a_public_only_registry() {
    let h = public_only().await;
    let internal = common::Fake::start().await; // stands for a service inside the network
    internal.put_manifest(REPO, "1", common::OCI_MANIFEST, "{\"secret\":true}");
    // The happy path first: the exempt upstream itself is served.
    let (_, layers) = h.upstream.put_image(REPO, "ok", &[bytes_of(100, 9)]);
    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/ok")).await.status(), StatusCode::OK);
    assert_eq!(h.get(&Harness::blob_path(REPO, &layers[0])).await.status(), StatusCode::OK);

    for target in [internal.url(), "http://169.254.169.254".to_owned(), "http://[::1]:9".to_owned()] {
        *h.upstream.state.redirect_all.lock().unwrap() = Some(target.clone());
        for path in [format!("/v2/{REPO}/tags/list"), format!("/v2/{REPO}/manifests/1")] {
            let started = std::time::Instant::now();
            let r = h.get(&path).await;
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} via {target}: {body}");
            assert!(!body.contains("secret"), "{body}");
            assert!(started.elapsed() < Duration::from_secs(2), "refused before connecting");
        }
    }
    assert!(internal.log().is_empty(), "the internal service was reached: {:?}", internal.log());
    assert!(h
        .berth
        .mirror
        .store
        .disk
        .scan()
        .unwrap()
        .iter()
        .all(|(d, _)| *d != common::digest_of("{\"secret\":true}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_an_internal_address_is_refused_for_a_public_only_registry() {
    let h = public_only().await;
    let internal = common::Fake::start().await;
    h.upstream.state.auth.lock().unwrap().bearer = true;
    *h.upstream.state.realm.lock().unwrap() = Some(format!("{}/token", internal.url()));
    h.upstream.put_image(REPO, "1", &[bytes_of(100, 3)]);
    let r = h.get(&format!("/v2/{REPO}/manifests/1")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "{}", r.text().await.unwrap());
    assert!(internal.log().is_empty(), "the realm was asked: {:?}", internal.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_spellings_of_loopback_are_refused_by_the_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let listener = common::Fake::start().await; // something listening on loopback
    let port = listener.addr.port();
    let cfg = berth::config::Config::parse(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndefault_registry = \"*\"\n\
         [storage]\ndir = \"{}\"\n[[registry]]\nhost = \"*\"\nendpoint = \"https://*\"\n",
        dir.path().display()
    ))
    .unwrap();
    let berth = berth::Server::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    for ns in [
        format!("2130706433:{port}"),
        format!("127.1:{port}"),
        format!("0x7f.1:{port}"),
        format!("0177.1:{port}"),
    ] {
        let url = format!("http://{}/v2/{REPO}/manifests/1?ns={ns}", berth.registry_addr);
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{ns}");
        assert!(r.text().await.unwrap().contains("DENIED"));
    }
    assert!(listener.log().is_empty());
}
