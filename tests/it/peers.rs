//! Peer mirrors: a miss goes to the digest's owner, once per digest across the cluster; peer
//! trouble (down, cut, wrong bytes) falls back to upstream; a forwarded request is never
//! forwarded again.

use crate::common;

use std::time::Duration;

use berth::oci::digest::Digest;
use berth::test_util::ring;
use bytes::Bytes;
use common::{bytes_of, Fake, Fault, Harness};
use http::{Method, StatusCode};
use url::Url;

const REPO: &str = "library/app";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn url_of(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A berth on `port` that knows `peers` (URLs, itself possibly among them).
async fn peer(upstream: &Fake, port: u16, peers: &[String], token: Option<&str>) -> Harness {
    peer_as(upstream, port, &url_of(port), peers, token).await
}

/// A berth on `port` that calls itself `me`.
async fn peer_as(upstream: &Fake, port: u16, me: &str, peers: &[String], token: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[("docker.io", &upstream.url())], "");
    cfg.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.peers = Some(peers_config(me, peers, token));
    let berth = berth::Server::start(&cfg).await.unwrap();
    Harness { dir, upstream: upstream.clone(), berth, client: reqwest::Client::new() }
}

/// `[peers]` for tests: short timeouts, a long backoff, no DNS.
fn peers_config(me: &str, peers: &[String], token: Option<&str>) -> berth::config::Peers {
    berth::config::Peers {
        self_url: Url::parse(me).unwrap(),
        static_peers: peers.iter().map(|p| Url::parse(p).unwrap()).collect(),
        dns: None,
        dns_interval: Duration::from_secs(30),
        timeout: Duration::from_millis(200),
        read_timeout: Duration::from_secs(2),
        backoff: Duration::from_secs(60),
        // Every cluster has a token ([peers] requires one); `None` means the default one.
        token: berth::config::Secret::new(token.unwrap_or("cluster-token")).into(),
        ca_file: None,
    }
}

/// `n` berths on free ports, each knowing all of them.
async fn cluster(upstream: &Fake, n: usize, token: Option<&str>) -> Vec<Harness> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| url_of(*p)).collect();
    let mut nodes = Vec::new();
    for p in &ports {
        nodes.push(peer(upstream, *p, &urls, token).await);
    }
    nodes
}

fn upstream_gets(upstream: &Fake, d: &Digest) -> Vec<common::Logged> {
    upstream.log().into_iter().filter(|l| l.method == Method::GET && l.path.contains(d.as_str())).collect()
}

/// A blob that `want` owns among `peers`, for each (peers, want) condition.
fn blob_owned(conditions: &[(&[&str], &str)]) -> Bytes {
    for seed in 0..=255u8 {
        let blob = bytes_of(2 << 20, seed);
        let d = Digest::of(&blob);
        if conditions.iter().all(|(peers, want)| ring::owner(peers.iter().copied(), &d) == Some(*want)) {
            return blob;
        }
    }
    panic!("no seed satisfies {conditions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_fetches_each_blob_and_manifest_from_upstream_once() {
    let upstream = Fake::start().await;
    let layers: Vec<Bytes> = (0..6).map(|i| bytes_of(1 << 20, 10 + i)).collect();
    let (manifest, digests) = upstream.put_image(REPO, "v1", &layers);
    let nodes = cluster(&upstream, 3, Some("s3cret")).await;
    // Every node pulls everything at once: the manifest by tag, then every blob.
    let digests = &digests;
    let pulls = nodes.iter().map(|n| async move {
        let m = n.get(&format!("/v2/{REPO}/manifests/v1")).await;
        assert_eq!(m.status(), StatusCode::OK);
        let gets = digests.iter().map(move |d| async move {
            let r = n.get(&Harness::blob_path(REPO, d)).await;
            assert_eq!(r.status(), StatusCode::OK, "{d}");
            let body = r.bytes().await.unwrap();
            assert_eq!(Digest::of(&body), *d);
        });
        futures::future::join_all(gets).await;
    });
    futures::future::join_all(pulls).await;
    for d in digests.iter().chain([&manifest]) {
        assert_eq!(upstream_gets(&upstream, d).len(), 1, "{d} was not fetched from upstream once");
    }
    // The tag is resolved by each node with a HEAD; no node GETs it.
    assert_eq!(upstream.count(Method::GET, "/manifests/v1"), 0);
    let manifest_len = upstream.state.manifests.lock().unwrap()[&format!("{REPO}:v1")].1.len();
    for n in &nodes {
        let r = n.client.head(n.url(&format!("/v2/{REPO}/manifests/v1"))).send().await.unwrap();
        assert_eq!(r.headers()["content-length"], manifest_len.to_string().as_str(), "HEAD by tag");
    }
    let forwarded: u64 =
        nodes.iter().map(|n| n.berth.probe().peer_status()["forwarded"].as_u64().unwrap()).sum();
    assert!(forwarded >= 6, "misses were not asked of their owners ({forwarded} forwarded)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_is_down_is_skipped_for_upstream() {
    let upstream = Fake::start().await;
    let (me, gone) = (free_port(), free_port());
    let (me_url, gone_url) = (url_of(me), url_of(gone));
    let blob = blob_owned(&[(&[&me_url, &gone_url], &gone_url)]);
    let d = upstream.add_blob(blob.clone());
    let node = peer(&upstream, me, std::slice::from_ref(&gone_url), None).await;
    let r = node.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(upstream_gets(&upstream, &d).len(), 1);
    let status = node.berth.probe().peer_status();
    assert_eq!(status["peers"][0]["healthy"], false, "{status}");
    // While it is down, this instance owns everything.
    assert_eq!(status["self"]["ownership_share"], 1.0, "{status}");
    let admin = |q: &str| format!("http://{}/api/v1/peers{q}", node.berth.admin_addr);
    let r: serde_json::Value =
        node.client.get(admin(&format!("?digest={d}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["owner"], me_url.as_str(), "{r}");
    assert_eq!(r["peers"][0]["peer"], gone_url.as_str(), "{r}");
    assert!(r["peers"][0]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let bad = node.client.get(admin("?digest=sha256:nope")).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// A fake peer: a fake registry holding the same blob, with a fault.
async fn fake_peer_case(fault: Fault) -> (Fake, Harness, Bytes, Digest) {
    let upstream = Fake::start().await;
    let fake_peer = Fake::start().await;
    let me = free_port();
    let (me_url, peer_url) = (url_of(me), fake_peer.url().trim_end_matches('/').to_owned());
    let blob = blob_owned(&[(&[&me_url, &peer_url], &peer_url)]);
    let d = upstream.add_blob(blob.clone());
    fake_peer.add_blob(blob.clone());
    fake_peer.fault(&d, fault);
    let node = peer(&upstream, me, &[peer_url], None).await;
    (fake_peer, node, blob, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_cuts_the_stream_is_resumed_from_upstream() {
    let at = 700_000;
    let (fake_peer, node, blob, d) = fake_peer_case(Fault::CutOnce { at, honour_range: true }).await;
    let r = node.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == blob, "the client saw the peer's cut");
    assert_eq!(fake_peer.count(Method::GET, d.as_str()), 1);
    let up = upstream_gets(&node.upstream, &d);
    assert_eq!(up.len(), 1, "{up:?}");
    let from: usize = up[0]
        .range
        .as_deref()
        .expect("a Range request")
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= at, "resumed from {from}");
    node.settle().await;
    assert!(node.stored_blobs().contains(&d.hex().to_owned()));
    assert_eq!(node.berth.probe().peer_status()["peers"][0]["healthy"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_from_a_peer_are_rejected_and_fetched_from_upstream() {
    let (fake_peer, node, blob, d) = fake_peer_case(Fault::Corrupt).await;
    let path = Harness::blob_path(REPO, &d);
    // The first client follows the peer's bytes: its body must not end as complete.
    let first = node.get(&path).await;
    let complete = match first.bytes().await {
        Ok(b) => b == blob,
        Err(_) => false,
    };
    assert!(!complete || fake_peer.count(Method::GET, d.as_str()) == 0);
    node.settle().await;
    assert!(!node.stored_blobs().contains(&d.hex().to_owned()), "the peer's wrong bytes were kept");
    assert_eq!(node.berth.probe().peer_status()["peers"][0]["healthy"], false);
    // The peer is left out now: the next client gets the blob from upstream.
    let r = node.get(&path).await;
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(upstream_gets(&node.upstream, &d).len(), 1);
    assert_eq!(fake_peer.count(Method::GET, d.as_str()), 1);
    node.settle().await;
    assert!(node.stored_blobs().contains(&d.hex().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_manifest_bytes_from_a_peer_fall_back_at_once() {
    let upstream = Fake::start().await;
    let fake_peer = Fake::start().await;
    let me = free_port();
    let (me_url, peer_url) = (url_of(me), fake_peer.url().trim_end_matches('/').to_owned());
    let mut n = 0u32;
    let (manifest, d) = loop {
        let m = format!(r#"{{"schemaVersion":2,"mediaType":"{}","n":{n}}}"#, common::OCI_MANIFEST);
        let d = Digest::of(m.as_bytes());
        if ring::owner([me_url.as_str(), peer_url.as_str()], &d) == Some(peer_url.as_str()) {
            break (m, d);
        }
        n += 1;
    };
    upstream.put_manifest(REPO, "v1", common::OCI_MANIFEST, manifest.clone());
    fake_peer.put_manifest(
        REPO,
        "v1",
        common::OCI_MANIFEST,
        manifest.replace("schemaVersion\":2", "schemaVersion\":3"),
    );
    let node = peer(&upstream, me, &[peer_url], None).await;
    let r = node.get(&format!("/v2/{REPO}/manifests/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), manifest.as_bytes());
    assert_eq!(upstream_gets(&upstream, &d).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_request_is_never_forwarded_again() {
    // Each node knows only the next one, under another name (localhost) than the one it
    // calls itself (127.0.0.1), so that their views of ownership disagree: the blob is
    // chosen so that each thinks the next one owns it, a -> b -> c -> a. Without the hop
    // marker this would loop.
    let upstream = Fake::start().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let me = [0, 1, 2].map(|i| url_of(ports[i]));
    let alias = [0, 1, 2].map(|i| format!("http://localhost:{}", ports[i]));
    let blob = blob_owned(&[
        (&[&me[0], &alias[1]], &alias[1]),
        (&[&me[1], &alias[2]], &alias[2]),
        (&[&me[2], &alias[0]], &alias[0]),
    ]);
    let d = upstream.add_blob(blob.clone());
    let na = peer_as(&upstream, ports[0], &me[0], &[alias[1].clone()], None).await;
    let nb = peer_as(&upstream, ports[1], &me[1], &[alias[2].clone()], None).await;
    let nc = peer_as(&upstream, ports[2], &me[2], &[alias[0].clone()], None).await;
    let r = tokio::time::timeout(Duration::from_secs(10), na.get(&Harness::blob_path(REPO, &d)))
        .await
        .expect("the request looped");
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(upstream_gets(&upstream, &d).len(), 1);
    let served = |n: &Harness| n.berth.probe().peer_status()["served_to_peers"].as_u64().unwrap();
    assert_eq!((served(&na), served(&nb), served(&nc)), (0, 1, 0), "b must answer a's request itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_requests_need_the_peer_token() {
    let upstream = Fake::start().await;
    let port = free_port();
    let node = peer(&upstream, port, &[url_of(free_port())], Some("s3cret")).await;
    let d = upstream.add_blob(bytes_of(1000, 3));
    let path = Harness::blob_path(REPO, &d);
    let ask = |token: Option<&'static str>| {
        let mut req = node.client.get(node.url(&path)).header("x-berth-hop", "http://127.0.0.1:1");
        if let Some(t) = token {
            req = req.header("x-berth-peer-token", t);
        }
        req.send()
    };
    for bad in [None, Some("wrong")] {
        let r = ask(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("DENIED"));
    }
    assert_eq!(ask(Some("s3cret")).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_preheat_warms_every_peer_and_fetches_each_blob_once() {
    let upstream = Fake::start().await;
    let layers: Vec<Bytes> = (0..4).map(|i| bytes_of(1 << 20, 40 + i)).collect();
    let (_, digests) = upstream.put_image(REPO, "v1", &layers);
    let nodes = cluster(&upstream, 3, Some("s3cret")).await;
    let admin = format!("http://{}/api/v1/preheat?wait=true", nodes[0].berth.admin_addr);
    let body = serde_json::json!({ "images": [format!("docker.io/{REPO}:v1")], "scope": "cluster" });
    let r = nodes[0].client.post(&admin).json(&body).send().await.unwrap();
    let code = r.status();
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["state"], "succeeded");
    let parts = status["peers"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{status}");
    for part in parts {
        assert_eq!(part["state"], "succeeded", "{part}");
        assert_eq!(part["items"], part["items_cached"], "{part}");
    }
    for n in &nodes {
        let stored = n.stored_blobs();
        for d in &digests {
            assert!(stored.contains(&d.hex().to_owned()), "{d} not on {}", n.berth.registry_addr);
        }
    }
    for d in &digests {
        assert_eq!(upstream_gets(&upstream, d).len(), 1, "{d}");
    }
    // Only peers may use the peer API, and a cluster preheat needs peers.
    let sneaky = nodes[1].client.post(nodes[1].url("/berth/v1/preheat")).json(&body).send().await.unwrap();
    assert_eq!(sneaky.status(), StatusCode::FORBIDDEN);
    let alone = Harness::start().await;
    let r = alone
        .client
        .post(format!("http://{}/api/v1/preheat", alone.berth.admin_addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("[peers]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_are_found_through_dns_and_the_answer_is_refreshed() {
    let upstream = Fake::start().await;
    let (me, other) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), &[("docker.io", &upstream.url())], "");
    cfg.server.listen = format!("127.0.0.1:{me}").parse().unwrap();
    cfg.peers = Some(berth::config::Peers {
        dns: Some(format!("localhost:{other}")),
        dns_interval: Duration::from_millis(100),
        ..peers_config(&url_of(me), &[], None)
    });
    let node = berth::Server::start(&cfg).await.unwrap();
    let peers = node.probe();
    let want = url_of(other);
    for _ in 0..50 {
        if peers.peer_members().contains(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(peers.peer_members().contains(&want), "{:?}", peers.peer_members());
    assert!(!peers.peer_members().contains(&url_of(me)), "this instance is not its own peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_answering_a_foreign_job_id_or_a_huge_status_is_a_failed_part() {
    let upstream = Fake::start().await;
    upstream.put_image(REPO, "v1", &[bytes_of(1 << 16, 3)]);
    // One peer answers a job id that would walk the peer API's paths; one a 20 MiB status.
    // (Both are in the ring, so misses of the image they own are forwarded to them too.)
    let (walker, flood) = (Fake::start().await, Fake::start().await);
    let answer = |fake: &Fake, path: &str, status: u16, body: String| {
        fake.state.answers.lock().unwrap().insert(path.to_owned(), (status, body));
    };
    answer(&walker, "/berth/v1/preheat", 202, r#"{"id":"../../v2/library/x/manifests/1"}"#.into());
    answer(&flood, "/berth/v1/preheat", 202, r#"{"id":"0123456789abcdef"}"#.into());
    answer(
        &flood,
        "/berth/v1/preheat/0123456789abcdef",
        200,
        format!("{{\"pad\":\"{}\"}}", "x".repeat(20 << 20)),
    );
    let port = free_port();
    let node = peer(&upstream, port, &[url_of(port), walker.url(), flood.url()], None).await;
    let admin = format!("http://{}/api/v1/preheat?wait=true", node.berth.admin_addr);
    let body = serde_json::json!({ "images": [format!("docker.io/{REPO}:v1")], "scope": "cluster" });
    let status: serde_json::Value =
        node.client.post(&admin).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    let part = |url: String| {
        let parts = status["peers"].as_array().unwrap();
        parts
            .iter()
            .find(|p| p["peer"] == url.trim_end_matches('/'))
            .cloned()
            .unwrap_or_else(|| panic!("{url}: {status}"))
    };
    let walked = part(walker.url());
    assert_eq!(walked["state"], "failed");
    assert!(walked["error"].as_str().unwrap().contains("job id"), "{walked}");
    assert!(
        !walker
            .log()
            .iter()
            .any(|l| l.path.contains("library/x") || l.path.starts_with("/berth/v1/preheat/")),
        "a peer's id was followed: {:?}",
        walker.log()
    );
    let flooded = part(flood.url());
    assert_eq!(flooded["state"], "failed");
    assert!(flooded["error"].as_str().unwrap().contains("over"), "{flooded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_far_ahead_of_a_fill_through_the_owner_never_asks_upstream_itself() {
    // The owner streams slowly; a footer read on this node waits for that one fill.
    let (fake_peer, node, blob, d) =
        fake_peer_case(Fault::Slow { chunk: 256 << 10, delay: Duration::from_millis(25) }).await;
    let r =
        node.client.get(node.url(&Harness::blob_path(REPO, &d))).header("range", "bytes=-4096").send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(r.bytes().await.unwrap() == blob.slice(blob.len() - 4096..));
    assert!(upstream_gets(&node.upstream, &d).is_empty(), "a range went around the owner to upstream");
    assert_eq!(upstream_gets(&fake_peer, &d).len(), 1, "the owner was asked once");
}
