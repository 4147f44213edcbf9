//! Referrers answers kept for signature policies that must verify offline: fresh within the
//! ttl, served stale when upstream is down, keyed by their query, never kept when they are not
//! an image index; their index and the manifests it lists are part of the subject's version.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, bytes_of, Harness};

const REPO: &str = "library/app";

fn referrers_path(subject: &str, query: &str) -> String {
    format!("/v2/{REPO}/referrers/{subject}{query}")
}

/// An index naming one signature manifest of `subject`.
fn index_of(signature: &str, size: usize) -> String {
    json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": common::OCI_MANIFEST, "digest": signature, "size": size,
         "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}]})
    .to_string()
}

fn upstream_referrers(h: &Harness) -> usize {
    h.upstream.log().iter().filter(|l| l.method == Method::GET && l.path.contains("/referrers/")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_kept_fresh_for_the_ttl_and_served_stale_when_upstream_is_down() {
    let h = Harness::start_with("", |c| c.tags.ttl = Duration::from_secs(2)).await;
    let (subject, _) = h.upstream.put_image(REPO, "1", &[bytes_of(100, 1)]);
    let (signature, _) = h.upstream.put_image(REPO, "sig", &[bytes_of(50, 2)]);
    let index = index_of(signature.as_str(), 300);
    h.upstream.state.referrers.lock().unwrap().insert(subject.to_string(), index.clone());
    let path = referrers_path(subject.as_str(), "");
    // Ages are kept in whole seconds: a 2 s ttl is fresh for at least 1 s.

    let r = h.get(&path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(r.text().await.unwrap(), index);
    assert_eq!(h.get(&path).await.text().await.unwrap(), index);
    assert_eq!(upstream_referrers(&h), 1, "within the ttl, the kept answer is served");

    // Past the ttl with upstream failing: the last answer.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    *h.upstream.state.referrers_status.lock().unwrap() = Some(503);
    let r = h.get(&path).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), index);
    assert_eq!(upstream_referrers(&h), 2, "asked again after the ttl");
    // A subject never asked for has nothing to fall back on.
    let other = referrers_path(common::digest_of("other").as_str(), "");
    assert_eq!(h.get(&other).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A client error is upstream's answer, not an outage.
    *h.upstream.state.referrers_status.lock().unwrap() = Some(404);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(h.get(&path).await.status(), StatusCode::NOT_FOUND);

    // The tag schema (`sha256-<hex>.sig`) is a tag like any other: kept, and stale when down.
    let sig_tag = format!("sha256-{}.sig", subject.hex());
    h.upstream.put_image(REPO, &sig_tag, &[bytes_of(40, 3)]);
    let tag_path = format!("/v2/{REPO}/manifests/{sig_tag}");
    assert_eq!(h.get(&tag_path).await.status(), StatusCode::OK);
    *h.upstream.state.manifest_status.lock().unwrap() = Some(503);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(h.get(&tag_path).await.status(), StatusCode::OK, "a signature tag with upstream down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_answers_are_kept_apart_and_answers_that_are_not_an_index_are_not_kept() {
    let h = Harness::start().await;
    let (subject, _) = h.upstream.put_image(REPO, "1", &[bytes_of(100, 4)]);
    let filtered = referrers_path(subject.as_str(), "?artifactType=application%2Fx&ns=docker.io");
    let r = h.get(&filtered).await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let log = h.upstream.log();
    let asked = log.iter().rev().find(|l| l.path.contains("/referrers/")).unwrap();
    assert!(!asked.path.contains("ns="), "ns is not passed on: {}", asked.path);
    let r = h.get(&filtered).await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType", "kept with its header");
    assert_eq!(upstream_referrers(&h), 1);
    let _ = h.get(&referrers_path(subject.as_str(), "")).await;
    assert_eq!(upstream_referrers(&h), 2, "the unfiltered answer is another key");
    // Other parameters (an upstream's own page cursor, say) are passed on, and such answers
    // are not kept: asked each time, never another kept answer.
    for junk in ["?page=2", "?page=2&ns=docker.io", "?artifactType=application%2Fx&y=3"] {
        assert_eq!(h.get(&referrers_path(subject.as_str(), junk)).await.status(), StatusCode::OK);
        let log = h.upstream.log();
        let asked = log.iter().rev().find(|l| l.path.contains("/referrers/")).unwrap();
        assert!(asked.path.contains(junk.split('&').next().unwrap()), "{junk} not passed on: {}", asked.path);
        assert!(!asked.path.contains("ns="), "{}", asked.path);
    }
    assert_eq!(upstream_referrers(&h), 5, "an answer to an unknown parameter was served from a kept one");
    let _ = h.get(&referrers_path(subject.as_str(), "?page=2")).await;
    assert_eq!(upstream_referrers(&h), 6, "an answer to an unknown parameter was kept");

    // Not an image index: passed on, never kept; over 4 MiB: refused.
    let (odd, _) = h.upstream.put_image(REPO, "2", &[bytes_of(100, 5)]);
    h.upstream
        .state
        .referrers
        .lock()
        .unwrap()
        .insert(odd.to_string(), r#"{"manifests":[{"digest":"nope"}]}"#.into());
    let path = referrers_path(odd.as_str(), "");
    for _ in 0..2 {
        assert_eq!(h.get(&path).await.text().await.unwrap(), r#"{"manifests":[{"digest":"nope"}]}"#);
    }
    assert_eq!(upstream_referrers(&h), 8, "an answer that is not an index is asked for each time");
    let (big, _) = h.upstream.put_image(REPO, "3", &[bytes_of(100, 6)]);
    let huge = format!(r#"{{"manifests":[],"pad":"{}"}}"#, "x".repeat(5 << 20));
    h.upstream.state.referrers.lock().unwrap().insert(big.to_string(), huge);
    assert_eq!(h.get(&referrers_path(big.as_str(), "")).await.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_kept_referrers_and_their_signatures_are_part_of_its_version() {
    let h = Harness::start().await;
    let (subject, layers) = h.upstream.put_image(REPO, "1", &[bytes_of(1000, 7)]);
    let (signature, sig_layers) = h.upstream.put_image(REPO, "sig", &[bytes_of(60, 8)]);
    h.upstream.state.referrers.lock().unwrap().insert(subject.to_string(), index_of(signature.as_str(), 300));
    for path in [
        format!("/v2/{REPO}/manifests/1"),
        Harness::blob_path(REPO, &layers[0]),
        format!("/v2/{REPO}/manifests/{signature}"),
        Harness::blob_path(REPO, &sig_layers[0]),
    ] {
        assert_eq!(h.get(&path).await.status(), StatusCode::OK, "{path}");
    }
    h.settle().await;
    let versions = || async {
        let cache = h.admin_json("/api/v1/cache").await;
        cache["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["digest"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut before = versions().await;
    before.sort();
    let mut both = vec![subject.to_string(), signature.to_string()];
    both.sort();
    assert_eq!(before, both, "apart, the signature is a version of its own");
    assert_eq!(h.get(&referrers_path(subject.as_str(), "")).await.status(), StatusCode::OK);
    assert_eq!(versions().await, vec![subject.to_string()], "the signature belongs to its subject");
}
