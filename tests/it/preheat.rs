//! Preheat through the admin API against a fake upstream.

use crate::common;

use common::{bytes_of, Harness};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const REPO: &str = "library/multi";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

struct Multi {
    index: berth::oci::digest::Digest,
    amd64_layers: Vec<berth::oci::digest::Digest>,
    arm64_layers: Vec<berth::oci::digest::Digest>,
}

/// An index over linux/amd64 and linux/arm64/v8 images plus an attestation entry.
fn push_multi(h: &Harness, tag: &str, arm64_layer_sizes: &[usize]) -> Multi {
    let (amd64, amd64_layers) =
        h.upstream.put_image(REPO, "amd64-only", &[bytes_of(300_000, 1), bytes_of(1000, 2)]);
    let arm_layers: Vec<_> =
        arm64_layer_sizes.iter().enumerate().map(|(i, &n)| bytes_of(n, 10 + i as u8)).collect();
    let (arm64, arm64_layers) = h.upstream.put_image(REPO, "arm64-only", &arm_layers);
    let manifest_size = |d: &berth::oci::digest::Digest| {
        h.upstream.state.manifests.lock().unwrap()[&format!("{REPO}:{d}")].1.len()
    };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": common::OCI_MANIFEST, "digest": amd64.as_str(), "size": manifest_size(&amd64),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": common::OCI_MANIFEST, "digest": arm64.as_str(), "size": manifest_size(&arm64),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": common::OCI_MANIFEST, "digest": amd64.as_str(), "size": manifest_size(&amd64),
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ]
    });
    let index = h.upstream.put_manifest(REPO, tag, OCI_INDEX, index.to_string());
    Multi { index, amd64_layers, arm64_layers }
}

fn admin(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.berth.admin_addr)
}

async fn preheat(h: &Harness, body: Value) -> (StatusCode, Value) {
    let r = h.client.post(admin(h, "/api/v1/preheat?wait=true")).json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

fn items(status: &Value) -> Vec<Value> {
    status["images"].as_array().unwrap().iter().flat_map(|i| i["items"].as_array().unwrap().clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preheats_one_platform_and_pulls_need_no_upstream() {
    let h = Harness::start().await;
    let m = push_multi(&h, "1", &[2 << 20, 500]);
    h.upstream.clear_log();
    let (code, status) = preheat(&h, json!({"images": ["multi:1"], "platforms": ["linux/arm64"]})).await;
    assert_eq!(code, StatusCode::OK, "{status:#}");
    assert_eq!(status["state"], "succeeded");
    let image = &status["images"][0];
    assert_eq!(image["reference"], "docker.io/library/multi:1");
    assert_eq!(image["digest"], m.index.as_str());
    assert_eq!(image["platforms"], json!(["linux/arm64/v8"]));
    let items = items(&status);
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["index", "manifest", "config", "layer", "layer"]);
    for item in &items {
        assert_eq!(item["state"], "cached", "{item}");
        assert!(item["tiers"].as_array().unwrap().contains(&json!("disk")), "{item}");
        // Memory was asked for (the default) and everything fits 64 MiB, also the 2 MiB layer
        // above memory_max_object.
        assert!(item["tiers"].as_array().unwrap().contains(&json!("memory")), "{item}");
        assert_eq!(item["bytes_done"], item["size"]);
    }
    assert_eq!(status["bytes_done"], status["bytes_total"]);
    for d in &m.amd64_layers {
        assert_eq!(h.upstream.count(Method::GET, d.as_str()), 0, "another platform's blob was fetched");
    }

    // Upstream gone: the pull by tag resolves from the tag cache and every blob is a hit.
    h.upstream.stop();
    let r = h
        .client
        .get(h.url(&format!("/v2/{REPO}/manifests/1")))
        .header("Accept", CONTAINERD_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], m.index.as_str());
    for d in &m.arm64_layers {
        let r = h.get(&Harness::blob_path(REPO, d)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_layer_fails_the_job_and_the_rest_is_cached() {
    let h = Harness::start().await;
    let m = push_multi(&h, "1", &[1000, 2000]);
    h.upstream.state.blobs.lock().unwrap().remove(m.arm64_layers[1].as_str());
    let (code, status) =
        preheat(&h, json!({"images": ["docker.io/library/multi:1"], "platforms": ["linux/arm64"]})).await;
    assert!(!code.is_success(), "a failed job must not answer 2xx with wait=true");
    assert_eq!(status["state"], "failed");
    for item in items(&status) {
        if item["digest"] == m.arm64_layers[1].as_str() {
            assert_eq!(item["state"], "failed");
            assert!(item["error"].as_str().unwrap().contains("blob unknown"), "{item}");
            assert_eq!(item["tiers"], json!([]));
        } else {
            assert_eq!(item["state"], "cached", "{item}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn platform_missing_from_the_index_is_an_error_for_that_image() {
    let h = Harness::start().await;
    push_multi(&h, "1", &[1000]);
    let (code, status) = preheat(&h, json!({"images": ["multi:1"], "platforms": ["linux/s390x"]})).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY);
    let error = status["images"][0]["error"].as_str().unwrap();
    assert!(error.contains("linux/s390x") && error.contains("linux/arm64/v8"), "{error}");
    assert!(!error.contains("unknown/unknown"), "attestations listed as platforms: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_too_big_for_memory_say_so_and_disk_only_skips_memory() {
    let h = Harness::start_with("", |c| c.storage.memory_capacity = 4 << 20).await;
    let (_, layers) = h.upstream.put_image("library/big", "1", &[bytes_of(5 << 20, 1), bytes_of(2 << 20, 2)]);
    let (_, status) = preheat(&h, json!({"images": ["big:1"], "tiers": ["memory", "disk"]})).await;
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let find = |d: &berth::oci::digest::Digest| {
        items(&status).into_iter().find(|i| i["digest"] == d.as_str()).unwrap()
    };
    let too_big = find(&layers[0]);
    assert_eq!(too_big["tiers"], json!(["disk"]));
    assert!(too_big["note"].as_str().unwrap().contains("do not fit the memory tier"), "{too_big}");
    assert_eq!(find(&layers[1])["tiers"], json!(["memory", "disk"]));

    let (_, layers) = h.upstream.put_image("library/other", "1", &[bytes_of(2 << 20, 3)]);
    let (_, status) = preheat(&h, json!({"images": ["other:1"], "tiers": ["disk"]})).await;
    assert_eq!(find_in(&status, &layers[0])["tiers"], json!(["disk"]));
}

fn find_in(status: &Value, d: &berth::oci::digest::Digest) -> Value {
    items(status).into_iter().find(|i| i["digest"] == d.as_str()).unwrap()
}

#[tokio::test]
async fn bad_requests_are_400_with_a_message() {
    let h = Harness::start().await;
    for (body, needle) in [
        ("{", "invalid preheat request"),
        (r#"{"images": ["a"], "colour": 1}"#, "unknown field"),
        (r#"{"images": []}"#, "empty"),
        (r#"{"images": ["Not Valid"]}"#, "not an image reference"),
        (r#"{"images": ["quay.io/x/y:1"]}"#, "not mirrored"),
        (r#"{"images": ["a"], "platforms": ["linux"]}"#, "os/arch"),
        (r#"{"images": ["a"], "tiers": ["tape"]}"#, "unknown variant"),
        (r#"{"images": ["a"], "tiers": ["disk", "bucket"]}"#, "needs [bucket]"),
    ] {
        let r = h.client.post(admin(&h, "/api/v1/preheat")).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    let r = h.client.get(admin(&h, "/api/v1/preheat/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_listed_and_readable_by_id() {
    let h = Harness::start().await;
    h.upstream.put_image("library/app", "1", &[bytes_of(1000, 1)]);
    let r = h
        .client
        .post(admin(&h, "/api/v1/preheat"))
        .json(&json!({"images": ["app:1"], "pin": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let accepted: Value = r.json().await.unwrap();
    let url = admin(&h, accepted["status_url"].as_str().unwrap());
    let mut status = Value::Null;
    for _ in 0..200 {
        status = h.client.get(&url).send().await.unwrap().json().await.unwrap();
        if status["state"] == "succeeded" || status["state"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["pin"], true);
    assert!(status["finished_at"].is_string());
    let pins = h.berth.probe().pins().await;
    let pin = pins.iter().find(|(image, _)| image == "docker.io/library/app:1").expect("pin recorded");
    assert_eq!(pin.1, status["images"][0]["digest"].as_str().unwrap());
    let list: Value = h.client.get(admin(&h, "/api/v1/preheat")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"][0]["id"], accepted["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preheat_and_a_concurrent_pull_share_one_fill() {
    let h = Harness::start().await;
    let layer = bytes_of(2 << 20, 40);
    let (_, layers) = h.upstream.put_image("library/app", "1", std::slice::from_ref(&layer));
    h.upstream.fault(
        &layers[0],
        common::Fault::Slow { chunk: 64 << 10, delay: std::time::Duration::from_millis(10) },
    );
    let path = Harness::blob_path("library/app", &layers[0]);
    let pull = h.get(&path);
    let (pulled, (code, status)) = tokio::join!(async { pull.await.bytes().await.unwrap() }, async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        preheat(&h, json!({"images": ["app:1"]})).await
    });
    assert!(pulled == layer);
    assert_eq!(code, StatusCode::OK, "{status:#}");
    assert_eq!(h.upstream.count(Method::GET, layers[0].as_str()), 1, "the preheat started a second fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preheat_concurrency_bounds_parallel_fetches() {
    let h = Harness::start_with("", |c| c.preheat.concurrency = 2).await;
    let layers: Vec<_> = (0..6).map(|i| bytes_of(256 << 10, 50 + i)).collect();
    let (_, digests) = h.upstream.put_image("library/app", "1", &layers);
    for d in &digests {
        h.upstream
            .fault(d, common::Fault::Slow { chunk: 32 << 10, delay: std::time::Duration::from_millis(10) });
    }
    let (code, status) = preheat(&h, json!({"images": ["app:1"]})).await;
    assert_eq!(code, StatusCode::OK, "{status:#}");
    let most = h.upstream.state.most_sending.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} blob fetches at once with concurrency 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referrers_true_warms_signatures_from_the_referrers_answer_and_the_tag_schema() {
    let h = Harness::start().await;
    let repo = "library/signed";
    let (subject, _) = h.upstream.put_image(repo, "1", &[bytes_of(2000, 40)]);
    let (sig, sig_layers) = h.upstream.put_image(repo, "sig-by-api", &[bytes_of(90, 41)]);
    let att_tag = format!("sha256-{}.att", subject.hex());
    let (att, att_layers) = h.upstream.put_image(repo, &att_tag, &[bytes_of(80, 42)]);
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": common::OCI_MANIFEST, "digest": sig.as_str(), "size": 100}]});
    h.upstream.state.referrers.lock().unwrap().insert(subject.to_string(), index.to_string());

    let (st, plain) =
        preheat(&h, json!({"images": ["library/signed:1"], "platforms": ["linux/amd64"]})).await;
    assert_eq!(st, StatusCode::OK, "{plain}");
    let plain_items = items(&plain).len();
    let (st, job) =
        preheat(&h, json!({"images": ["library/signed:1"], "platforms": ["linux/amd64"], "referrers": true}))
            .await;
    assert_eq!(st, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "succeeded", "{job}");
    let all = items(&job);
    let digests: Vec<&str> = all.iter().map(|i| i["digest"].as_str().unwrap()).collect();
    for d in [&sig, &sig_layers[0], &att, &att_layers[0]] {
        assert!(digests.contains(&d.as_str()), "{d} not preheated: {job}");
    }
    assert!(all.iter().all(|i| i["state"] == "cached"), "{job}");
    assert_eq!(all.len(), plain_items + 6, "two signatures, each a manifest, a config and a layer");

    // Upstream gone: the signatures and their answer are still served.
    *h.upstream.state.manifest_status.lock().unwrap() = Some(503);
    *h.upstream.state.referrers_status.lock().unwrap() = Some(503);
    h.upstream.fault(&sig_layers[0], common::Fault::Status(503));
    let r = h.get(&format!("/v2/{repo}/referrers/{subject}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains(sig.as_str()));
    let att_url = h.url(&format!("/v2/{repo}/manifests/{att_tag}"));
    let r = h.client.get(att_url).header("accept", common::OCI_MANIFEST).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the attestation's tag, as cosign asks for it");
    let r = h.get(&common::Harness::blob_path(repo, &sig_layers[0])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h.upstream.count(Method::GET, sig_layers[0].as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn referrers_that_fail_or_flood_are_reported_and_bounded_and_the_image_is_still_warmed() {
    let h = Harness::start().await;
    let repo = "library/signed";
    let (subject, layers) = h.upstream.put_image(repo, "1", &[bytes_of(2000, 43)]);
    let (sig, _) = h.upstream.put_image(repo, "good", &[bytes_of(90, 44)]);
    let (broken, _) = h.upstream.put_image(repo, "broken", &[bytes_of(70, 45)]);
    h.upstream.fault(&broken, common::Fault::Status(503));
    let missing: Vec<_> = (0..200).map(|i| common::digest_of(format!("missing-{i}"))).collect();
    let listed: Vec<Value> = [&sig, &broken]
        .into_iter()
        .chain(&missing)
        .map(|d| json!({"mediaType": common::OCI_MANIFEST, "digest": d.as_str(), "size": 100}))
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed});
    h.upstream.state.referrers.lock().unwrap().insert(subject.to_string(), index.to_string());

    let (st, job) = preheat(&h, json!({"images": ["library/signed:1"], "referrers": true})).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{job}");
    assert_eq!(job["state"], "failed", "a referrer that could not be had is not a success: {job}");
    let error = job["images"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(broken.as_str()), "the failing referrer is named: {job}");
    let all = items(&job);
    let state_of = |d: &berth::oci::digest::Digest| {
        all.iter().find(|i| i["digest"] == d.as_str()).map(|i| i["state"].clone())
    };
    assert_eq!(state_of(&layers[0]), Some(json!("cached")), "the image itself is warmed: {job}");
    assert_eq!(state_of(&sig), Some(json!("cached")), "the good signature is warmed: {job}");
    let asked = h.upstream.log().iter().filter(|l| l.path.contains("/manifests/sha256:")).count();
    assert!(asked <= 64 + 4, "{asked} referrer manifests asked of upstream for one subject");

    // A referrers answer upstream cannot give: the image is warmed, and fails by name.
    let (other, other_layers) = h.upstream.put_image(repo, "2", &[bytes_of(3000, 46)]);
    *h.upstream.state.referrers_status.lock().unwrap() = Some(503);
    let (st, job) = preheat(&h, json!({"images": ["library/signed:2"], "referrers": true})).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{job}");
    let error = job["images"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("referrers of {other}")), "{job}");
    let all = items(&job);
    assert!(all.iter().any(|i| i["digest"] == other_layers[0].as_str() && i["state"] == "cached"), "{job}");
}
