//! `GET /metrics` after a known sequence of requests. One test in its own binary, beside
//! `tests/it`: the recorder is process-wide, and other tests would add to its counts.

#[allow(clippy::too_many_lines)]
#[path = "it/common.rs"]
mod common;

use common::{bytes_of, Harness};
use http::StatusCode;

/// The value of the series `name` whose labels include every pair in `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, v) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name || !labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{val}\""))) {
            return None;
        }
        v.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_happened() {
    let h = Harness::start().await;
    let layer = bytes_of(300_000, 1);
    let (_, layers) = h.upstream.put_image("library/app", "1", std::slice::from_ref(&layer));
    let blob = Harness::blob_path("library/app", &layers[0]);
    assert_eq!(h.get("/v2/").await.status(), StatusCode::OK);
    assert_eq!(h.get("/v2/library/app/manifests/1").await.status(), StatusCode::OK);
    h.get(&blob).await.bytes().await.unwrap(); // fill
    h.settle().await;
    h.get(&blob).await.bytes().await.unwrap(); // memory
    h.get(&blob).await.bytes().await.unwrap(); // memory
    let missing = berth::oci::digest::Digest::of(b"missing");
    assert_eq!(h.get(&Harness::blob_path("library/app", &missing)).await.status(), StatusCode::NOT_FOUND);

    let text = h
        .client
        .get(format!("http://{}/metrics", h.berth.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v = |name, labels: &[(&str, &str)]| {
        value(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(v("berth_requests_total", &[("route", "base"), ("status", "200")]), 1.0);
    assert_eq!(
        v("berth_requests_total", &[("route", "blob"), ("status", "200"), ("tier", "fill-leader")]),
        1.0
    );
    assert_eq!(v("berth_requests_total", &[("route", "blob"), ("status", "200"), ("tier", "memory")]), 2.0);
    assert_eq!(v("berth_requests_total", &[("route", "blob"), ("status", "404")]), 1.0);
    assert_eq!(v("berth_served_bytes_total", &[("tier", "memory")]), 2.0 * layer.len() as f64);
    // Upstream: the manifest GET, the blob GET, the 404.
    assert_eq!(v("berth_upstream_requests_total", &[("registry", "docker.io"), ("status", "200")]), 2.0);
    assert_eq!(v("berth_upstream_requests_total", &[("registry", "docker.io"), ("status", "404")]), 1.0);
    assert!(v("berth_upstream_bytes_total", &[("registry", "docker.io")]) >= layer.len() as f64);
    assert_eq!(v("berth_fills_total", &[("outcome", "stored")]), 1.0);
    assert!(v("berth_tier_bytes", &[("tier", "disk")]) >= layer.len() as f64);
    assert_eq!(v("berth_tier_capacity_bytes", &[("tier", "memory")]), (64u64 << 20) as f64);
    assert_eq!(v("berth_fills_in_flight", &[]), 0.0);
    // Two fills (the layer, and the missing blob's, which failed), one client each; the
    // manifest and the layer on disk.
    assert_eq!(v("berth_fill_clients_count", &[]), 2.0);
    assert_eq!(v("berth_fill_clients_sum", &[]), 2.0);
    assert_eq!(v("berth_tier_objects", &[("tier", "disk")]), 2.0);
    assert!(v("berth_tier_objects", &[("tier", "memory")]) >= 0.0);
    assert_eq!(value(&text, "berth_unverified_ranges_total", &[]), None);

    // Ranges answered from fills in flight, counted by how their fill ended.
    let (good, bad) = (bytes_of(2 << 20, 2), bytes_of(2 << 20, 3));
    let (dg, db) = (h.upstream.add_blob(good.clone()), h.upstream.add_blob(bad.clone()));
    h.upstream
        .fault(&dg, common::Fault::Slow { chunk: 256 << 10, delay: std::time::Duration::from_millis(50) });
    h.upstream.fault(&db, common::Fault::Truncate);
    for d in [&dg, &db] {
        let path = Harness::blob_path("library/app", d);
        let whole = h.get(&path).await;
        let ranged = h.client.get(h.url(&path)).header("range", "bytes=0-999").send().await.unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(ranged.bytes().await.unwrap().len(), 1000);
        let _ = whole.bytes().await;
    }
    h.settle().await;
    let mut text = String::new();
    for _ in 0..50 {
        let r = h.client.get(format!("http://{}/metrics", h.berth.admin_addr)).send().await.unwrap();
        text = r.text().await.unwrap();
        if value(&text, "berth_unverified_ranges_total", &[("outcome", "failed")]).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        value(&text, "berth_unverified_ranges_total", &[("outcome", "verified")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, "berth_unverified_ranges_total", &[("outcome", "failed")]), Some(1.0), "{text}");
}
