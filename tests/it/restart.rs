//! Restart: what is on disk is served with upstream gone; interrupted fills leave nothing.

use crate::common;

use common::{bytes_of, config, Fake};
use http::StatusCode;

#[tokio::test]
async fn cached_image_is_served_after_restart_with_upstream_gone() {
    let upstream = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &[("docker.io", &upstream.url())], "");
    let layers = [bytes_of(2 << 20, 1), bytes_of(1000, 2)]; // one disk-only, one memory-sized
    let (manifest, digests) = upstream.put_image("library/app", "1", &layers);
    let client = reqwest::Client::new();

    let berth = berth::Server::start(&cfg).await.unwrap();
    let base = format!("http://{}", berth.registry_addr);
    assert_eq!(
        client.get(format!("{base}/v2/library/app/manifests/1")).send().await.unwrap().status(),
        StatusCode::OK
    );
    for d in &digests {
        client.get(format!("{base}/v2/library/app/blobs/{d}")).send().await.unwrap().bytes().await.unwrap();
    }
    while berth.probe().fills_in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    berth.stop().await.unwrap();
    upstream.stop();

    // A crash mid-fill leaves a temp file behind.
    let tmp = dir.path().join("v1/tmp");
    std::fs::write(tmp.join("deadbeef.1.0"), b"partial").unwrap();

    // Expire every tag too: revalidation fails, so the stale mapping must be served.
    cfg.tags.ttl = std::time::Duration::ZERO;
    let berth = berth::Server::start(&cfg).await.unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "leftover temp file not removed");
    let base = format!("http://{}", berth.registry_addr);
    let r = client.get(format!("{base}/v2/library/app/manifests/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    let r = client.get(format!("{base}/v2/library/app/manifests/{manifest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for (d, layer) in digests.iter().zip(&layers) {
        let r = client.get(format!("{base}/v2/library/app/blobs/{d}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap() == *layer);
    }
    berth.stop().await.unwrap();
}

#[tokio::test]
async fn a_damaged_blob_on_disk_is_a_miss_and_is_fetched_again() {
    let upstream = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("docker.io", &upstream.url())], "");
    let layer = bytes_of(2 << 20, 3);
    let d = upstream.add_blob(layer.clone());
    let client = reqwest::Client::new();
    let berth = berth::Server::start(&cfg).await.unwrap();
    let url = format!("http://{}/v2/library/app/blobs/{d}", berth.registry_addr);
    assert!(client.get(&url).send().await.unwrap().bytes().await.unwrap() == layer);
    while berth.probe().fills_in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let path = berth.probe().disk_path(&d);
    berth.stop().await.unwrap();

    // Same length, one byte flipped: only hashing can tell.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12345] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let berth = berth::Server::start(&cfg).await.unwrap();
    let url = format!("http://{}/v2/library/app/blobs/{d}", berth.registry_addr);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == layer, "a damaged blob was served");
    assert_eq!(upstream.count(http::Method::GET, d.as_str()), 2, "not fetched again");
    berth.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_during_a_fill_waits_out_the_grace_and_publishes_nothing_partial() {
    let upstream = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &[("docker.io", &upstream.url())], "");
    cfg.server.shutdown_grace = std::time::Duration::from_secs(1);
    let layer = bytes_of(4 << 20, 5);
    let d = upstream.add_blob(layer.clone());
    // 64 chunks, 100 ms apart: the response needs about 6 s, the grace is 1 s.
    upstream.fault(&d, common::Fault::Slow { chunk: 64 << 10, delay: std::time::Duration::from_millis(100) });
    let berth = berth::Server::start(&cfg).await.unwrap();
    let url = format!("http://{}/v2/library/app/blobs/{d}", berth.registry_addr);
    let client = reqwest::Client::new();
    let reader = tokio::spawn(async move { client.get(&url).send().await.unwrap().bytes().await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let path = berth.probe().disk_path(&d);
    let mirror = berth.probe();
    let started = std::time::Instant::now();
    berth.stop().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(3),
        "stop took {took:?}"
    );
    assert!(!path.exists(), "a blob was published before its fill was complete");
    reader.abort();
    // In a process the fill dies with it; here it runs on, and only a verified whole blob
    // may ever appear.
    while mirror.fills_in_flight() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if path.exists() {
        assert!(std::fs::read(&path).unwrap() == layer);
    }
    drop(mirror);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let berth = berth::Server::start(&cfg).await.unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("v1/tmp")).unwrap().count(), 0);
    let url = format!("http://{}/v2/library/app/blobs/{d}", berth.registry_addr);
    assert!(reqwest::get(&url).await.unwrap().bytes().await.unwrap() == layer);
    berth.stop().await.unwrap();
}
