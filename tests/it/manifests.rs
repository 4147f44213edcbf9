//! Manifest path: tag cache, revalidation with HEAD, stale serving, content negotiation.

use crate::common;

use std::time::{Duration, Instant};

use common::{Harness, OCI_MANIFEST};
use http::{Method, StatusCode};

const REPO: &str = "library/app";
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

async fn get_tag(h: &Harness, tag: &str, accept: &str) -> reqwest::Response {
    h.client.get(h.url(&format!("/v2/{REPO}/manifests/{tag}"))).header("Accept", accept).send().await.unwrap()
}

fn short_ttl() -> impl FnOnce(&mut berth::config::Config) {
    |c| c.tags.ttl = Duration::from_secs(1)
}

#[tokio::test]
async fn tag_is_trusted_within_ttl_then_revalidated_with_head() {
    let h = Harness::start_with("", short_ttl()).await;
    let (d1, _) = h.upstream.put_image(REPO, "1", &[common::bytes_of(100, 1)]);
    let tag_path = format!("/{REPO}/manifests/1");

    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 1);

    // Within the ttl: no upstream request at all.
    h.upstream.clear_log();
    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    assert!(h.upstream.log().is_empty(), "upstream asked within ttl: {:?}", h.upstream.log());

    // After the ttl: one HEAD, no GET.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = h
        .client
        .head(h.url(&format!("/v2/{REPO}/manifests/1")))
        .header("Accept", CONTAINERD_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    assert_eq!(h.upstream.count(Method::HEAD, &tag_path), 1);
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 0);

    // The tag moves: the new version is fetched, the old one stays by digest.
    let (d2, _) = h.upstream.put_image(REPO, "1", &[common::bytes_of(100, 2)]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.upstream.clear_log();
    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.headers()["docker-content-digest"], d2.as_str());
    assert_eq!(h.upstream.count(Method::HEAD, &tag_path), 1);
    h.upstream.clear_log();
    let old = h.get(&format!("/v2/{REPO}/manifests/{d1}")).await;
    assert_eq!(old.status(), StatusCode::OK);
    assert_eq!(old.headers()["docker-content-digest"], d1.as_str());
    assert!(h.upstream.log().is_empty(), "old version was not kept");
}

#[tokio::test]
async fn rate_limit_serves_stale_mapping_or_passes_429_on() {
    let h = Harness::start_with("", short_ttl()).await;
    let (d1, _) = h.upstream.put_image(REPO, "1", &[common::bytes_of(100, 3)]);
    assert_eq!(get_tag(&h, "1", CONTAINERD_ACCEPT).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    *h.upstream.state.manifest_status.lock().unwrap() = Some(429);

    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::OK, "stale copy not served on 429");
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());
    assert!(h.upstream.count(Method::HEAD, "/manifests/1") >= 1);

    let r = get_tag(&h, "never-pulled", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
}

#[tokio::test]
async fn unreachable_upstream_answers_503_quickly_or_serves_stale() {
    let h = Harness::start_with("", short_ttl()).await;
    let (d1, _) = h.upstream.put_image(REPO, "1", &[common::bytes_of(100, 4)]);
    assert_eq!(get_tag(&h, "1", CONTAINERD_ACCEPT).await.status(), StatusCode::OK);
    h.upstream.stop();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::OK, "stale mapping not served with upstream down");
    assert_eq!(r.headers()["docker-content-digest"], d1.as_str());

    let start = Instant::now();
    let r = get_tag(&h, "2", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");

    let blob = berth::oci::digest::Digest::of(b"never fetched");
    let r = h.get(&Harness::blob_path(REPO, &blob)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_class_never_gets_a_manifest_type_it_did_not_ask_for() {
    let h = Harness::start().await;
    // The tag points to an index.
    let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let index_digest = h.upstream.put_manifest(REPO, "1", "application/vnd.oci.image.index.v1+json", index);
    let tag_path = format!("/{REPO}/manifests/1");
    let r = get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(r.headers()["docker-content-digest"], index_digest.as_str());
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 1);

    // docker's Accept set names the index type too: the entry is reused, upstream not asked.
    let docker = "application/vnd.docker.distribution.manifest.v1+prettyjws, application/json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let r = get_tag(&h, "1", docker).await;
    assert_eq!(r.headers()["docker-content-digest"], index_digest.as_str());
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 1, "a compatible entry was not reused");

    // A client that accepts only image manifests must not be handed the index.
    get_tag(&h, "1", OCI_MANIFEST).await;
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 2, "one class answered from another's entry");
    get_tag(&h, "1", OCI_MANIFEST).await;
    get_tag(&h, "1", CONTAINERD_ACCEPT).await;
    assert_eq!(h.upstream.count(Method::GET, &tag_path), 2);
}

#[tokio::test]
async fn manifest_headers_are_identical_on_head_and_get_and_bytes_exact() {
    let h = Harness::start().await;
    // Unusual but valid JSON layout: bytes must be served as they are, never re-serialized.
    let raw = format!("{{ \"schemaVersion\" : 2,\n  \"mediaType\": \"{DOCKER_V2}\", \"layers\": [] }}\n");
    let d = h.upstream.put_manifest(REPO, "odd", DOCKER_V2, raw.clone());
    for path in [format!("/v2/{REPO}/manifests/odd"), format!("/v2/{REPO}/manifests/{d}")] {
        let get = get_tag(&h, path.rsplit('/').next().unwrap(), CONTAINERD_ACCEPT).await;
        let head = h.client.head(h.url(&path)).header("Accept", CONTAINERD_ACCEPT).send().await.unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        for name in ["content-type", "content-length", "docker-content-digest", "etag"] {
            assert_eq!(head.headers().get(name), get.headers().get(name), "{name} differs for {path}");
        }
        assert_eq!(get.headers()["content-type"], DOCKER_V2);
        assert_eq!(get.headers()["etag"], format!("\"{d}\"").as_str());
        assert_eq!(get.text().await.unwrap(), raw);
    }
}

#[tokio::test]
async fn concurrent_tag_lookups_share_one_upstream_request() {
    let h = Harness::start().await;
    h.upstream.put_image(REPO, "1", &[common::bytes_of(100, 6)]);
    let gets = (0..16).map(|_| get_tag(&h, "1", CONTAINERD_ACCEPT));
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(h.upstream.count(Method::GET, &format!("/{REPO}/manifests/")), 1);
}

#[tokio::test]
async fn bad_manifests_are_refused_and_not_cached() {
    let h = Harness::start().await;
    // Too large.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5 << 20));
    let big_digest = h.upstream.put_manifest(REPO, "big", OCI_MANIFEST, big);
    let r = get_tag(&h, "big", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(!h.stored_blobs().contains(&big_digest.hex().to_owned()));

    // Upstream serves other bytes for a digest.
    let wanted = berth::oci::digest::Digest::of(b"the real manifest");
    h.upstream.state.manifests.lock().unwrap().insert(
        format!("{REPO}:{wanted}"),
        (OCI_MANIFEST.to_owned(), bytes::Bytes::from_static(b"{\"other\":1}")),
    );
    let r = h.get(&format!("/v2/{REPO}/manifests/{wanted}")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(!h.stored_blobs().contains(&wanted.hex().to_owned()));

    // Unknown tag.
    let r = get_tag(&h, "missing", CONTAINERD_ACCEPT).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
}
