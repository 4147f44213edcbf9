//! The trust boundary, tried as an attacker would: one test per attack, each named for it.
//! Requests that claim trust they do not have, upstreams that redirect inward or lie about
//! lengths, clients that hold connections open, and registries that try to read each other's
//! content. Each test fails if the guard it names is missing.

use crate::common;

use std::time::{Duration, Instant};

use common::{bytes_of, Fault, Harness};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        token: berth::config::Secret::new(token).into(),
        ca_file: None,
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
    let pins = h.berth.probe().pins().await;
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
    assert!(!h.berth.probe().disk_path(&common::digest_of("{\"secret\":true}")).exists());
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
    // Something listening on loopback that counts connections: the host check must refuse
    // before any connection is made (the connector's check would refuse only after one).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
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
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "a connection was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_errors_pass_through_with_their_status_and_code() {
    let h = Harness::start().await;
    let invalid = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":{}}]}"#;
    h.upstream
        .state
        .answers
        .lock()
        .unwrap()
        .insert(format!("/v2/{REPO}/manifests/v1"), (400, invalid.into()));
    let r = h
        .client
        .get(h.url(&format!("/v2/{REPO}/manifests/v1")))
        .header("accept", common::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "not 503: the client's error is no outage");
    assert_eq!(r.text().await.unwrap(), invalid);
    // A body that is no OCI error document keeps the status, with a generic body.
    h.upstream
        .state
        .answers
        .lock()
        .unwrap()
        .insert(format!("/v2/{REPO}/manifests/v2"), (409, "<html>".into()));
    let r = h.get(&format!("/v2/{REPO}/manifests/v2")).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("\"UNKNOWN\""));
    // Outages stay 503.
    h.upstream.state.answers.lock().unwrap().insert(format!("/v2/{REPO}/manifests/v3"), (502, "{}".into()));
    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/v3")).await.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_references_get_the_codes_distribution_gives() {
    let h = Harness::start().await;
    for (reference, status, code) in [
        (".INVALID_MANIFEST_NAME", StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("-x", StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("sha256:totallywrong", StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
    ] {
        for head in [false, true] {
            let url = h.url(&format!("/v2/{REPO}/manifests/{reference}"));
            let r = if head { h.client.head(url) } else { h.client.get(url) }.send().await.unwrap();
            assert_eq!(r.status(), status, "{reference}");
            if !head {
                assert!(r.text().await.unwrap().contains(code), "{reference}");
            }
        }
    }
    assert!(h.upstream.log().is_empty(), "nothing to ask upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_answers_keep_filters_links_and_error_codes() {
    let h = Harness::start().await;
    let d = common::digest_of("subject");
    let r = h.get(&format!("/v2/{REPO}/referrers/{d}?artifactType=application/x&ns=docker.io")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");

    let r = h.get(&format!("/v2/{REPO}/tags/list?n=1&ns=docker.io")).await;
    assert_eq!(r.headers()["link"], format!("</v2/{REPO}/tags/list?n=1&last=1&ns=docker.io>; rel=\"next\""));

    let unknown = r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"nope/x"}}]}"#;
    h.upstream.state.answers.lock().unwrap().insert("/v2/nope/x/tags/list".into(), (404, unknown.into()));
    let r = h.get("/v2/nope/x/tags/list").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.text().await.unwrap(), unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_range_gets_the_same_answer_on_a_hit_and_a_miss() {
    let h = Harness::start().await;
    let d = h.upstream.add_blob(bytes_of(5000, 4));
    let url = h.url(&Harness::blob_path(REPO, &d));
    let head = || h.client.head(&url).header("range", "bytes=10-19").send();
    let miss = head().await.unwrap();
    assert_eq!(h.get(&Harness::blob_path(REPO, &d)).await.bytes().await.unwrap().len(), 5000);
    h.settle().await;
    let hit = head().await.unwrap();
    for r in [&miss, &hit] {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "5000");
        assert!(r.headers().get("content-range").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_to_a_basic_auth_upstream_all_succeed() {
    let h = Harness::start_with("username = \"u\"\npassword_env = \"BERTH_HOSTILE_BASIC\"", |_| {});
    std::env::set_var("BERTH_HOSTILE_BASIC", "p");
    let h = h.await;
    h.upstream.state.auth.lock().unwrap().basic = Some(("u".into(), "p".into()));
    *h.upstream.state.challenge_delay.lock().unwrap() = Some(Duration::from_millis(200));
    let blobs: Vec<_> = (0..8).map(|i| h.upstream.add_blob(bytes_of(2000, 50 + i))).collect();
    let gets = blobs.iter().map(|d| h.client.get(h.url(&Harness::blob_path(REPO, d))).send());
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }
}

const MIB: usize = 1 << 20;

/// A berth with `capacity` bytes of disk and nothing counted as in use.
async fn small_disk(capacity: usize) -> Harness {
    Harness::start_with("", move |c| {
        c.storage.disk_capacity = capacity as u64;
        c.gc.in_use_window = Duration::ZERO;
    })
    .await
}

/// Pulls a blob whole, returns its status.
async fn pull(h: &Harness, d: &berth::oci::digest::Digest) -> StatusCode {
    let r = h.get(&Harness::blob_path(REPO, d)).await;
    let status = r.status();
    let _ = r.bytes().await;
    h.settle().await;
    status
}

fn on_disk(h: &Harness, d: &berth::oci::digest::Digest) -> bool {
    h.stored_blobs().contains(&d.hex().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_announces_more_than_it_sends_evicts_nothing() {
    // Two registries on one 8 MiB disk: an honest one, and one whose upstream announces
    // 7 MiB and sends 10 bytes.
    let honest = common::Fake::start().await;
    let liar = common::raw_upstream("HTTP/1.1 200 OK\r\nContent-Length: 7340032", bytes_of(10, 63)).await;
    let dir = tempfile::tempdir().unwrap();
    let liar_url = format!("http://{liar}");
    let mut cfg = common::config(dir.path(), &[("docker.io", &honest.url()), ("liar.test", &liar_url)], "");
    cfg.storage.disk_capacity = 8 * MIB as u64;
    cfg.gc.in_use_window = Duration::ZERO;
    let h = Harness {
        dir,
        upstream: honest,
        berth: berth::Server::start(&cfg).await.unwrap(),
        client: reqwest::Client::new(),
    };
    let kept: Vec<_> = (0..3).map(|i| h.upstream.add_blob(bytes_of(2 * MIB, 60 + i))).collect();
    for d in &kept {
        assert_eq!(pull(&h, d).await, StatusCode::OK);
    }
    let d = common::digest_of(bytes_of(10, 63));
    let r = h.get(&format!("/v2/{REPO}/blobs/{d}?ns=liar.test")).await;
    assert!(r.status() != StatusCode::OK || r.bytes().await.is_err(), "a short body is never complete");
    h.settle().await;
    for d in &kept {
        assert!(on_disk(&h, d), "an announced length evicted {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_near_u64_max_is_refused_with_502_before_any_byte() {
    let liar =
        common::raw_upstream("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551613", bytes_of(100, 64))
            .await;
    let (_dir, berth) =
        common::berth_for(&format!("http://{liar}"), |c| c.storage.disk_capacity = 8 * MIB as u64).await;
    let d = common::digest_of(bytes_of(100, 64));
    let r = reqwest::get(format!("http://{}/v2/{REPO}/blobs/{d}", berth.registry_addr)).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.text().await.unwrap().contains("SIZE_INVALID"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_above_max_blob_size_is_refused_and_not_kept() {
    // Announced above it, however large the disk.
    let h = Harness::start_with("", |c| c.storage.max_blob_size = 1000).await;
    let d = h.upstream.add_blob(bytes_of(5000, 65));
    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    // And a body with no length that grows past it is cut, and not kept.
    let d = h.upstream.add_blob(bytes_of(300_000, 66));
    h.upstream.fault(&d, common::Fault::NoLength);
    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert!(r.status() != StatusCode::OK || r.bytes().await.is_err());
    h.settle().await;
    assert!(!on_disk(&h, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_disk_is_served_uncached_without_evicting() {
    let h = small_disk(8 * MIB).await;
    let kept = h.upstream.add_blob(bytes_of(3 * MIB, 67));
    assert_eq!(pull(&h, &kept).await, StatusCode::OK);
    let huge = bytes_of(9 * MIB, 68);
    let d = h.upstream.add_blob(huge.clone());
    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == huge, "served whole");
    h.settle().await;
    assert!(on_disk(&h, &kept), "evicted for a blob that could never fit");
    assert!(!on_disk(&h, &d));
    assert_eq!(h.temp_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_blobs_and_manifests_stay_within_disk_capacity() {
    let capacity = 5 * MIB;
    let h = small_disk(capacity).await;
    let disk = h.berth.probe();
    for i in 0..4 {
        let d = h.upstream.add_blob(bytes_of(2 * MIB, 70 + i));
        h.upstream.fault(&d, common::Fault::NoLength);
        assert_eq!(pull(&h, &d).await, StatusCode::OK);
        assert!(disk.disk_used() <= capacity as u64, "{} bytes on a {capacity}-byte disk", disk.disk_used());
    }
    // Manifests too: 64 manifests of 100 KiB on a disk with room for a few.
    let h = small_disk(MIB).await;
    let disk = h.berth.probe();
    for i in 0..64 {
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"pad\":\"{}\"}}",
            common::OCI_MANIFEST,
            "x".repeat(100 << 10)
        );
        let d = h.upstream.put_manifest(REPO, &format!("t{i}"), common::OCI_MANIFEST, body.clone());
        let r = h.get(&format!("/v2/{REPO}/manifests/{d}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap(), body.as_bytes());
    }
    assert!(disk.disk_used() <= MIB as u64, "{} bytes on a 1 MiB disk", disk.disk_used());
}

/// Reads (and discards) until the server closes the connection; `None` if it is still open
/// after `bound`, else how long it took.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, until_closed).await.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let h = Harness::start_with("", |c| c.server.head_timeout = Duration::from_secs(1)).await;
    let mut silent = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    let took = took.expect("a connection that sent nothing is still open after 5 s");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the head timeout");
}

/// The client preface of HTTP/2 over cleartext, and an empty SETTINGS frame.
const H2C_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

#[tokio::test]
async fn an_h2c_connection_that_sends_only_its_preface_is_closed_when_idle() {
    let h = Harness::start_with("", |c| c.server.idle_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    s.write_all(H2C_PREFACE).await.unwrap();
    // The server's SETTINGS, PING and GOAWAY go unanswered.
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    let took = took.expect("an HTTP/2 connection with no request is still open after 5 s");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the idle timeout");
}

#[tokio::test]
async fn an_h2c_peer_that_does_not_answer_pings_is_dropped() {
    let h = Harness::start_with("", |c| {
        c.server.client_idle_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut s = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    s.write_all(H2C_PREFACE).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took.is_some(), "a peer that answers no ping is still connected after 5 s");
}

/// Sends a GET for `path` on an open HTTP/1.1 connection and reads the answer: status, body.
async fn get_on(s: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n").as_bytes()).await.unwrap();
    read_response(s).await
}

async fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("the connection closed before a response head"));
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length = head.lines().find_map(|l| {
        let l = l.to_ascii_lowercase();
        l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
    });
    let mut body = vec![0; length.unwrap_or(0)];
    s.read_exact(&mut body).await.unwrap();
    (status, body)
}

#[tokio::test]
async fn connections_past_max_connections_wait_and_open_ones_keep_working() {
    let h = Harness::start_with("", |c| c.server.max_connections = 2).await;
    let addr = h.berth.registry_addr;
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut first, "/v2/").await.0, 200);
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut second, "/v2/").await.0, 200);

    // The kernel completes the third handshake; berth does not take the connection yet.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(800), third.read_u8()).await;
    assert!(early.is_err(), "a connection past max_connections was served: {early:?}");

    assert_eq!(get_on(&mut first, "/v2/").await.0, 200, "an open connection stopped working");
    assert_eq!(get_on(&mut second, "/v2/").await.0, 200, "an open connection stopped working");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third)).await;
    assert_eq!(answered.expect("the waiting connection was not served once one closed").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_and_a_request_queued_for_a_fill_are_not_idle() {
    let h = Harness::start_with("", |c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.storage.max_fills = 1;
    })
    .await;
    // About 3.5 s of body: more than twice the idle timeout.
    let slow = bytes_of(36 << 10, 1);
    let slow_digest = h.upstream.add_blob(slow.clone());
    h.upstream.fault(&slow_digest, Fault::Slow { chunk: 1 << 10, delay: Duration::from_millis(100) });
    let queued = bytes_of(1 << 10, 2);
    let queued_digest = h.upstream.add_blob(queued.clone());

    let mut streaming = TcpStream::connect(h.berth.registry_addr).await.unwrap();
    let started = Instant::now();
    let slow_path = Harness::blob_path("library/app", &slow_digest);
    let streamed = tokio::spawn(async move {
        let answer = get_on(&mut streaming, &slow_path).await;
        (answer, streaming)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Over HTTP/2, waiting its turn behind the slow fill (the only one allowed).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let asked = Instant::now();
    let waited = h2.get(h.url(&Harness::blob_path("library/app", &queued_digest))).send().await.unwrap();
    assert_eq!(waited.version(), http::Version::HTTP_2);
    assert!(waited.bytes().await.unwrap() == queued, "the queued request's body differs");
    let waited = asked.elapsed();
    assert!(waited > Duration::from_secs(2), "the request did not wait its turn: {waited:?}");

    let ((status, body), mut streaming) = streamed.await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(2), "the body was not slow: {:?}", started.elapsed());
    assert_eq!(status, 200);
    assert!(body == slow, "the slow body differs");
    // The connection is still open and kept alive.
    assert_eq!(get_on(&mut streaming, "/v2/").await.0, 200);
}

/// berth in front of two registries: "docker.io" (the default) and "b.test".
async fn two_registries() -> (Harness, common::Fake) {
    let a = common::Fake::start().await;
    let b = common::Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[("docker.io", &a.url()), ("b.test", &b.url())], "");
    let berth = berth::Server::start(&cfg).await.unwrap();
    (Harness { dir, upstream: a, berth, client: reqwest::Client::new() }, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_from_one_registry_is_not_served_under_another_that_lacks_it() {
    let (h, b) = two_registries().await;
    let blob = bytes_of(3000, 80);
    let d = h.upstream.add_blob(blob.clone());
    let under_b = format!("{}?ns=b.test", Harness::blob_path(REPO, &d));
    assert_eq!(pull(&h, &d).await, StatusCode::OK);
    for head in [false, true] {
        let url = h.url(&under_b);
        let r = if head { h.client.head(url) } else { h.client.get(url) }.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "served under b.test, which lacks it (head: {head})");
    }
    // Once b.test has it, one HEAD confirms it and the cached copy is served.
    b.add_blob(blob.clone());
    b.clear_log();
    let r = h.get(&under_b).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(b.count(http::Method::GET, d.as_str()), 0, "content is stored once");
    assert_eq!(b.count(http::Method::HEAD, d.as_str()), 1);
    // Recorded: with b.test down, what it confirmed is still served under it, and nothing else.
    let other = h.upstream.add_blob(bytes_of(3000, 81));
    assert_eq!(pull(&h, &other).await, StatusCode::OK);
    b.stop();
    assert_eq!(h.get(&under_b).await.status(), StatusCode::OK);
    let other_under_b = format!("{}?ns=b.test", Harness::blob_path(REPO, &other));
    assert_eq!(h.get(&other_under_b).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cached_from_one_registry_is_not_served_under_another_that_lacks_it() {
    let (h, b) = two_registries().await;
    let (m, _) = h.upstream.put_image(REPO, "1", &[bytes_of(100, 82)]);
    assert_eq!(h.get(&format!("/v2/{REPO}/manifests/{m}")).await.status(), StatusCode::OK);
    let r = h.get(&format!("/v2/{REPO}/manifests/{m}?ns=b.test")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(b.log().iter().all(|l| l.method == http::Method::HEAD), "only asked, never fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_registrys_404_does_not_answer_another_registrys_concurrent_request() {
    let (h, b) = two_registries().await;
    let (m, _) = b.put_image(REPO, "1", &[bytes_of(100, 83)]);
    *h.upstream.state.manifest_delay.lock().unwrap() = Some(Duration::from_millis(600));
    let under_a = h.client.get(h.url(&format!("/v2/{REPO}/manifests/{m}"))).send();
    let under_b = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.client.get(h.url(&format!("/v2/{REPO}/manifests/{m}?ns=b.test"))).send().await
    };
    let (a, bb) = tokio::join!(under_a, under_b);
    assert_eq!(a.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(bb.unwrap().status(), StatusCode::OK, "b.test has it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_gets_bounded_bcrypt_work() {
    let files = tempfile::tempdir().unwrap();
    // A realistic cost: each check takes a noticeable fraction of a second.
    let hash = bcrypt::hash("right", 11).unwrap();
    std::fs::write(files.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let htpasswd = files.path().join("htpasswd");
    let h = Harness::start_with("", |c| {
        c.auth = Some(berth::config::Auth { htpasswd_file: Some(htpasswd), tokens_file: None })
    })
    .await;
    let started = Instant::now();
    let attempts =
        (0..40).map(|i| h.client.get(h.url("/v2/")).basic_auth("alice", Some(format!("guess{i}"))).send());
    let statuses: Vec<StatusCode> =
        futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap().status()).collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "every guess got a bcrypt run: {statuses:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    // The right password still passes.
    let r = h.client.get(h.url("/v2/")).basic_auth("alice", Some("right")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// berth mirroring two fake upstreams as "a.example" (the default) and "b.example", with
/// `[storage] max_fills` and nothing else about fills configured.
async fn two_registries_with_fills(
    a: &common::Fake,
    b: &common::Fake,
    max_fills: usize,
) -> (tempfile::TempDir, berth::Server) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        default_registry = "a.example"
        [storage]
        dir = "{}"
        max_fills = {max_fills}
        [[registry]]
        host = "a.example"
        endpoint = "{}"
        [[registry]]
        host = "b.example"
        endpoint = "{}"
        "#,
        dir.path().display(),
        a.url(),
        b.url(),
    );
    let cfg = berth::config::Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let berth = berth::Server::start(&cfg).await.unwrap();
    (dir, berth)
}

/// Waits until `fake` has had `n` blob GETs.
async fn blob_gets_reach(fake: &common::Fake, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.count(http::Method::GET, "/blobs/") < n {
        assert!(
            Instant::now() < deadline,
            "upstream got {} blob GETs, not {n}",
            fake.count(http::Method::GET, "/blobs/")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_trickles_does_not_hold_the_fill_turns_of_another() {
    let (a, b) = (common::Fake::start().await, common::Fake::start().await);
    let (_dir, berth) = two_registries_with_fills(&a, &b, 2).await;
    let client = reqwest::Client::new();
    let url = |ns: &str, d: &berth::oci::digest::Digest| {
        format!("http://{}/v2/{REPO}/blobs/{d}?ns={ns}", berth.registry_addr)
    };
    // Two fills from A, a byte every 200 ms: minutes each, and as many as max_fills.
    for seed in [1, 2] {
        let d = a.add_blob(bytes_of(4096, seed));
        a.fault(&d, Fault::Trickle { chunk: 1, delay: Duration::from_millis(200) });
        tokio::spawn(client.get(url("a.example", &d)).send());
    }
    blob_gets_reach(&a, 2).await;

    let cold = bytes_of(1000, 3);
    let d = b.add_blob(cold.clone());
    let pulled = tokio::time::timeout(Duration::from_secs(2), async {
        client.get(url("b.example", &d)).send().await.unwrap().bytes().await.unwrap()
    })
    .await
    .expect("a cold pull from B waited behind A's trickling fills");
    assert!(pulled == cold, "B's blob differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_trickles_below_the_min_rate_is_cut_and_frees_its_turn() {
    let h =
        Harness::start_with("min_rate = \"1KiB/s\"\nrate_window = \"300ms\"", |c| c.storage.max_fills = 1)
            .await;
    // 320 bytes a second, never silent long enough for read_timeout: 64 KiB take minutes.
    let d = h.upstream.add_blob(bytes_of(64 << 10, 4));
    h.upstream.fault(&d, Fault::Trickle { chunk: 16, delay: Duration::from_millis(50) });
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), async {
        let r = h.get(&Harness::blob_path(REPO, &d)).await;
        (r.status(), r.text().await.unwrap_or_default())
    })
    .await
    .expect("a trickling upstream held its fill for 10 s");
    // With no length announced, the client waits for the whole blob: it gets the error.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("UNAVAILABLE"), "{body}");
    // Each window below the floor is a cut: the first GET, 3 resumes, then the fill failed.
    h.settle().await;
    assert_eq!(h.upstream.count(http::Method::GET, d.as_str()), 4, "resumes were not bounded");
    assert!(started.elapsed() < Duration::from_secs(8), "cut after {:?}", started.elapsed());
    assert!(!on_disk(&h, &d), "a cut blob was kept");
    assert_eq!(h.temp_files(), 0, "a temp file was left");

    // The only turn is free again: a cold pull goes through at once.
    let next = bytes_of(1000, 5);
    let nd = h.upstream.add_blob(next.clone());
    let pulled = tokio::time::timeout(Duration::from_secs(2), async {
        h.get(&Harness::blob_path(REPO, &nd)).await.bytes().await.unwrap()
    })
    .await
    .expect("the cut fill kept its turn");
    assert!(pulled == next, "the next blob differs");
}

/// Hostile upstream answers must not panic berth: a token response whose `expires_in` is
/// near u64::MAX overflows `Instant + Duration` in `TokenCache::put`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_response_with_a_huge_expires_in_gets_an_answer_not_a_panic() {
    let body = r#"{"token":"t","expires_in":18446744073709551615}"#;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}", body.len());
    let realm = common::raw_upstream(&head, body.into()).await;
    let h = Harness::start().await;
    h.upstream.state.auth.lock().unwrap().bearer = true;
    *h.upstream.state.realm.lock().unwrap() = Some(format!("http://{realm}/token"));
    let d = h.upstream.add_blob(bytes_of(100, 93));
    let r = h.client.head(h.url(&Harness::blob_path(REPO, &d))).send().await;
    assert!(r.is_ok(), "no HTTP answer (the handler panicked): {r:?}");
}

/// The `served` table (provenance) keeps a row per (registry, digest) a registry confirmed
/// with a HEAD, also for content berth never stored; rows go only with a stored blob, so a
/// HEAD flood for made-up digests grows meta.redb (one durable write each) without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_for_content_berth_does_not_hold_leave_no_permanent_record() {
    let yes =
        common::raw_upstream("HTTP/1.1 200 OK\r\nContent-Length: 5", bytes::Bytes::from_static(b"hello"))
            .await;
    let fake = common::Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        common::config(dir.path(), &[("docker.io", &fake.url()), ("any.test", &format!("http://{yes}"))], "");
    let berth = berth::Server::start(&cfg).await.unwrap();
    let client = reqwest::Client::new();
    let digests: Vec<_> = (0..50u32).map(|i| berth::oci::digest::Digest::of(&i.to_le_bytes())).collect();
    for d in &digests {
        let url = format!("http://{}/v2/{REPO}/blobs/{d}?ns=any.test", berth.registry_addr);
        assert_eq!(client.head(url).send().await.unwrap().status(), StatusCode::OK);
    }
    let kept = digests.iter().filter(|d| berth.probe().served("any.test", d)).count();
    assert_eq!(kept, 0, "{kept} provenance rows for blobs berth does not hold");
}

/// A request berth refuses (404: the registry named in ns lacks the blob) still touches the
/// blob, which keeps it "in use" (never evicted) for in_use_window: an anonymous client pins
/// any cached blob for an hour per HEAD, and through it the whole image version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_keep_a_blob_in_use() {
    let (a, b) = (common::Fake::start().await, common::Fake::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[("docker.io", &a.url()), ("b.test", &b.url())], "");
    cfg.storage.disk_capacity = 5 * MIB as u64;
    cfg.gc.in_use_window = Duration::from_secs(2);
    let h = Harness {
        dir,
        upstream: a,
        berth: berth::Server::start(&cfg).await.unwrap(),
        client: reqwest::Client::new(),
    };
    let old = h.upstream.add_blob(bytes_of(3 * MIB, 94));
    assert_eq!(h.get(&Harness::blob_path(REPO, &old)).await.bytes().await.unwrap().len(), 3 * MIB);
    h.settle().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // past the in-use window
    let refused = h.client.head(h.url(&format!("{}?ns=b.test", Harness::blob_path(REPO, &old)))).send().await;
    assert_eq!(refused.unwrap().status(), StatusCode::NOT_FOUND);
    let new = h.upstream.add_blob(bytes_of(3 * MIB, 95));
    assert_eq!(h.get(&Harness::blob_path(REPO, &new)).await.bytes().await.unwrap().len(), 3 * MIB);
    h.settle().await;
    let stored = h.stored_blobs();
    assert!(
        stored.contains(&new.hex().to_owned()),
        "the new blob was served uncached: the refused HEAD kept the old one in use"
    );
}

/// Isolation between registries covers whether a digest is served, not how: the media type
/// is stored per digest from whichever registry fetched it first, so a registry an attacker
/// runs (the wildcard's, or any other) that serves the right bytes under a wrong Content-Type
/// first decides the Content-Type every other registry's clients get (containerd then refuses
/// the manifest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_registrys_content_type_does_not_answer_another_registrys_clients() {
    let (a, b) = (common::Fake::start().await, common::Fake::start().await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &[("docker.io", &a.url()), ("b.test", &b.url())], "");
    let berth = berth::Server::start(&cfg).await.unwrap();
    let body = format!(r#"{{"schemaVersion":2,"mediaType":"{}","layers":[]}}"#, common::OCI_MANIFEST);
    let d = a.put_manifest(REPO, "1", common::OCI_MANIFEST, body.clone());
    b.put_manifest(REPO, "1", "text/html", body);
    let client = reqwest::Client::new();
    let url = |ns: &str| format!("http://{}/v2/{REPO}/manifests/{d}?ns={ns}", berth.registry_addr);
    let first = client.get(url("b.test")).send().await.unwrap();
    assert_eq!(first.headers()["content-type"], common::OCI_MANIFEST, "the type the manifest names");
    let r = client.get(url("docker.io")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        common::OCI_MANIFEST,
        "docker.io's clients got b.test's media type"
    );
}

/// Bytes allocated on disk under `dir` now.
fn allocated(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// `storage.disk_capacity` holds for temp files too: a fill that cannot be kept passes
/// through (announced larger than the disk) or, with no length to pass through with, is
/// refused once it outgrows the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_is_not_kept_does_not_write_past_disk_capacity() {
    let capacity = 2 * MIB;
    let h = Harness::start_with("", |c| {
        c.storage.disk_capacity = capacity as u64;
        c.gc.in_use_window = Duration::ZERO;
    })
    .await;
    let chunked = bytes_of(16 * MIB, 90);
    let d1 = h.upstream.add_blob(chunked.clone());
    h.upstream.fault(&d1, Fault::NoLength);
    let announced = bytes_of(16 * MIB, 91);
    let d2 = h.upstream.add_blob(announced.clone());
    h.upstream.fault(&d2, Fault::Slow { chunk: 256 << 10, delay: Duration::from_millis(10) });

    for (d, blob) in [(d1.clone(), chunked), (d2, announced)] {
        let tmp = h.dir.path().join("v1/tmp");
        let watch = tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..300 {
                most = most.max(allocated(&tmp));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        });
        let r = h.get(&Harness::blob_path(REPO, &d)).await;
        if d == d1 {
            // No length: nothing to pass through with, and more than the disk holds: refused.
            assert!(r.status() != StatusCode::OK || r.bytes().await.is_err());
        } else {
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.bytes().await.unwrap() == blob, "passed through whole");
        }
        let most = watch.await.unwrap();
        h.settle().await;
        // One write batch (256 KiB) may land before its reservation is refused.
        let slack = 256 << 10;
        assert!(most <= (capacity + slack) as u64, "{most} bytes in v1/tmp on a {capacity}-byte disk ({d})");
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// What a hand-written HTTP/2 client saw: when its connection ended (if it did), and per
/// stream the DATA bytes it took and whether the stream ended.
struct H2Seen {
    ended_after: Option<Duration>,
    data: Vec<usize>,
    complete: Vec<bool>,
}

/// How the hand-written HTTP/2 client behaves: its SETTINGS_INITIAL_WINDOW_SIZE (None: the
/// default 65535), and for each GET how many bytes of window it opens on that stream (and
/// on the connection) at each tick; None: never. Like a live peer, it acknowledges SETTINGS
/// and PINGs.
struct H2Client {
    initial_window: Option<u32>,
    gets: Vec<(String, Option<u32>)>,
    tick: Duration,
}

impl H2Client {
    /// Runs the GETs on one h2c connection until every stream ended, the connection ended,
    /// or `within` passed.
    async fn run(self, addr: std::net::SocketAddr, within: Duration) -> H2Seen {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let settings =
            self.initial_window.map(|w| [&[0u8, 4][..], &w.to_be_bytes()].concat()).unwrap_or_default();
        wr.write_all(&frame(0x4, 0, 0, &settings)).await.unwrap();
        for (i, (path, _)) in self.gets.iter().enumerate() {
            let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
            block.extend(path.as_bytes());
            block.extend([0x01, 5]);
            block.extend(b"berth");
            wr.write_all(&frame(0x1, 0x5, 2 * i as u32 + 1, &block)).await.unwrap();
        }
        let steps: Vec<(u32, u32)> = self
            .gets
            .iter()
            .enumerate()
            .filter_map(|(i, (_, step))| Some((2 * i as u32 + 1, (*step)?)))
            .collect();
        let (replies, mut to_send) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let every = self.tick;
        let writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let out = tokio::select! {
                    reply = to_send.recv() => match reply { Some(r) => r, None => return },
                    _ = tick.tick() => steps.iter().flat_map(|&(stream, n)| {
                        [frame(0x8, 0, 0, &n.to_be_bytes()), frame(0x8, 0, stream, &n.to_be_bytes())].concat()
                    }).collect(),
                };
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let n = self.gets.len();
        let mut seen = H2Seen { ended_after: None, data: vec![0; n], complete: vec![false; n] };
        let read = async {
            while seen.complete.iter().any(|c| !c) {
                let mut head = [0u8; 9];
                if rd.read_exact(&mut head).await.is_err() {
                    seen.ended_after = Some(started.elapsed());
                    return;
                }
                let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    seen.ended_after = Some(started.elapsed());
                    return;
                }
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let i = (stream.max(1) as usize - 1) / 2;
                match (kind, flags & 1) {
                    (0x0, end) if i < n => {
                        seen.data[i] += len;
                        seen.complete[i] |= end == 1;
                    }
                    (0x6, 0) => drop(replies.send(frame(0x6, 1, 0, &payload))),
                    (0x4, 0) => drop(replies.send(frame(0x4, 1, 0, &[]))),
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(within, read).await;
        writer.abort();
        seen
    }
}

/// A berth with 1 s client and idle deadlines, and a blob of `len` bytes cached in memory.
async fn berth_with_a_cached_blob(len: usize, seed: u8) -> (Harness, berth::oci::digest::Digest) {
    let h = Harness::start_with("", |c| {
        c.server.client_idle_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let d = h.upstream.add_blob(bytes_of(len, seed));
    assert_eq!(h.get(&Harness::blob_path(REPO, &d)).await.bytes().await.unwrap().len(), len);
    h.settle().await;
    (h, d)
}

/// README: "A client that takes no bytes of a response for client_idle_timeout is dropped".
/// Over HTTP/2 a client that never opens its flow-control window (and answers pings) takes
/// no bytes, but no write is pending, so no write deadline sees it; its request is "in
/// flight", so idle_timeout never fires either, and its read guard would keep the blob busy
/// (never evicted) for as long as it liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_never_opens_its_window_is_dropped() {
    let (h, d) = berth_with_a_cached_blob(MIB, 92).await;
    let client = H2Client {
        initial_window: Some(0),
        gets: vec![(Harness::blob_path(REPO, &d), None)],
        tick: Duration::from_secs(1),
    };
    let seen = client.run(h.berth.registry_addr, Duration::from_secs(8)).await;
    assert!(
        seen.ended_after.is_some(),
        "an HTTP/2 client that took no byte is still connected after 8 s (client_idle_timeout 1 s)"
    );
    assert_eq!(seen.data, [0]);
    let released = Instant::now() + Duration::from_secs(5);
    while h.berth.probe().is_busy(&d) {
        assert!(Instant::now() < released, "the dropped stream's read guard is still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same with the default window: the client takes its first 64 KiB, then nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_stops_after_its_first_window_is_dropped() {
    let (h, d) = berth_with_a_cached_blob(MIB, 94).await;
    let client = H2Client {
        initial_window: None,
        gets: vec![(Harness::blob_path(REPO, &d), None)],
        tick: Duration::from_secs(1),
    };
    let seen = client.run(h.berth.registry_addr, Duration::from_secs(8)).await;
    assert!(seen.ended_after.is_some(), "still connected after 8 s, having taken {:?} bytes", seen.data);
    assert!(seen.data[0] < MIB, "{:?}", seen.data);
}

/// Each stream is judged on its own: feeding one stream does not keep a shut one alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_kept_shut_beside_a_fed_one_is_dropped() {
    let (h, d) = berth_with_a_cached_blob(MIB, 95).await;
    let path = Harness::blob_path(REPO, &d);
    // The fed stream would take about 16 s for its MiB: it outlasts the deadline.
    let client = H2Client {
        initial_window: Some(0),
        gets: vec![(path.clone(), Some(64 << 10)), (path, None)],
        tick: Duration::from_secs(1),
    };
    let seen = client.run(h.berth.registry_addr, Duration::from_secs(8)).await;
    assert!(seen.ended_after.is_some(), "still connected after 8 s with one stream shut: {:?}", seen.data);
    assert_eq!(seen.data[1], 0);
}

/// The other side: an HTTP/2 client that opens its window slowly but keeps taking bytes is
/// served to the end, on two streams at once, although each takes far longer than
/// client_idle_timeout, and so would each 4 MiB slice of the memory tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_h2_client_that_keeps_taking_bytes_is_served_in_full() {
    let len = 8 * MIB;
    let (h, d) = berth_with_a_cached_blob(len, 93).await;
    let path = Harness::blob_path(REPO, &d);
    // 256 KiB every 150 ms per stream: 4 MiB takes 2.4 s, the whole blob about 5 s.
    let step = Some(256 << 10);
    let client = H2Client {
        initial_window: Some(0),
        gets: vec![(path.clone(), step), (path, step)],
        tick: Duration::from_millis(150),
    };
    let seen = client.run(h.berth.registry_addr, Duration::from_secs(30)).await;
    assert_eq!(
        seen.complete,
        [true, true],
        "{:?} of {len} bytes; connection ended: {:?}",
        seen.data,
        seen.ended_after
    );
    assert_eq!(seen.data, [len, len]);
}

/// Fills are detached from their clients, and wait for a turn in a FIFO queue: a client that
/// asks for made-up digests and leaves at once still costs one queued fill and one upstream
/// request each, ahead of every later pull from that registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_abandoned_before_their_turn_are_not_fetched() {
    let h = Harness::start_with("", |c| c.storage.max_fills = 1).await;
    let slow = h.upstream.add_blob(bytes_of(64 << 10, 96));
    h.upstream.fault(&slow, Fault::Slow { chunk: 1024, delay: Duration::from_millis(50) });
    let slow_get = {
        let (client, url) = (h.client.clone(), h.url(&Harness::blob_path(REPO, &slow)));
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap().len() })
    };
    while h.upstream.count(http::Method::GET, slow.as_str()) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let junk: Vec<_> = (0..50u32).map(|i| berth::oci::digest::Digest::of(&i.to_be_bytes())).collect();
    for d in &junk {
        let _ = tokio::time::timeout(Duration::from_millis(20), h.get(&Harness::blob_path(REPO, d))).await;
    }
    assert_eq!(slow_get.await.unwrap(), 64 << 10);
    h.settle().await;
    let fetched = junk.iter().filter(|d| h.upstream.count(http::Method::GET, d.as_str()) > 0).count();
    assert_eq!(fetched, 0, "{fetched} upstream GETs for fills whose clients had all left while queued");
}
