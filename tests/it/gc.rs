//! GC wired to the store: capacity enforced before fills, LRU versions evicted, pins and
//! in-use content kept, the admin API, and readers not cut by a pass.

use crate::common;

use std::time::Duration;

use common::{bytes_of, Harness};
use futures::StreamExt;
use http::StatusCode;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// 10 MiB of disk; `window` is the in-use window.
async fn small_disk(window: Duration) -> Harness {
    Harness::start_with("", move |c| {
        c.storage.disk_capacity = 10 * MIB as u64;
        c.gc.in_use_window = window;
    })
    .await
}

async fn pull_image(h: &Harness, repo: &str, layers: &[berth::oci::digest::Digest]) {
    assert_eq!(h.get(&format!("/v2/{repo}/manifests/1")).await.status(), StatusCode::OK);
    for d in layers {
        let r = h.get(&Harness::blob_path(repo, d)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
    }
    h.settle().await;
}

fn admin(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.berth.admin_addr)
}

fn on_disk(h: &Harness, d: &berth::oci::digest::Digest) -> bool {
    h.stored_blobs().contains(&d.hex().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_that_does_not_fit_evicts_the_least_recently_pulled_image() {
    let h = small_disk(Duration::ZERO).await;
    let (_, a) = h.upstream.put_image("library/a", "1", &[bytes_of(3 * MIB, 1), bytes_of(3 * MIB, 2)]);
    let (_, b) = h.upstream.put_image("library/b", "1", &[bytes_of(3 * MIB, 3), bytes_of(3 * MIB, 4)]);
    pull_image(&h, "library/a", &a).await;
    pull_image(&h, "library/b", &b).await;
    let used = h.berth.probe().disk_used();
    assert!(used <= 10 * MIB as u64, "disk holds {used} bytes");
    assert!(!on_disk(&h, &a[0]) && !on_disk(&h, &a[1]), "the older image was kept");
    assert!(on_disk(&h, &b[0]) && on_disk(&h, &b[1]));
    // The kept image pulls with upstream gone.
    h.upstream.stop();
    pull_image(&h, "library/b", &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_images_stay_and_a_blob_with_no_room_is_served_uncached() {
    let h = small_disk(Duration::ZERO).await;
    let (_, a) = h.upstream.put_image("library/a", "1", &[bytes_of(5 * MIB, 5), bytes_of(4 * MIB, 6)]);
    let (_, b) = h.upstream.put_image("library/b", "1", &[bytes_of(4 * MIB, 7)]);
    pull_image(&h, "library/a", &a).await;
    let r = h.client.post(admin(&h, "/api/v1/pins")).json(&json!({"image": "a:1"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = h.get(&Harness::blob_path("library/b", &b[0])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap() == bytes_of(4 * MIB, 7), "the client must get the blob anyway");
    h.settle().await;
    assert!(on_disk(&h, &a[0]) && on_disk(&h, &a[1]), "a pinned image was evicted");
    assert!(!on_disk(&h, &b[0]), "no room: the blob must not be kept");
    assert_eq!(h.temp_files(), 0);
    let cache: Value = h.client.get(admin(&h, "/api/v1/cache")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cache["served_uncached"], 1);

    // Unpinned, a GC pass may take it.
    let r = h.client.delete(admin(&h, "/api/v1/pins")).json(&json!({"image": "a:1"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = h.client.post(admin(&h, "/api/v1/gc")).send().await.unwrap().json().await.unwrap();
    assert!(report["freed"].as_u64().unwrap() >= 9 * MIB as u64, "{report}");
    assert_eq!(report["evicted"][0]["reason"], "least recently pulled");
    assert!(h.berth.probe().disk_used() <= 8 * MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_read_within_the_in_use_window_is_not_evicted() {
    let h = small_disk(Duration::from_secs(3600)).await;
    let (_, a) = h.upstream.put_image("library/a", "1", &[bytes_of(4 * MIB, 8), bytes_of(3 * MIB, 9)]);
    let (_, b) = h.upstream.put_image("library/b", "1", &[bytes_of(4 * MIB, 10)]);
    pull_image(&h, "library/a", &a).await;
    let r = h.get(&Harness::blob_path("library/b", &b[0])).await;
    assert!(r.bytes().await.unwrap() == bytes_of(4 * MIB, 10));
    h.settle().await;
    assert!(on_disk(&h, &a[0]) && on_disk(&h, &a[1]), "an image in use was evicted");
    assert!(!on_disk(&h, &b[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_being_read_is_not_evicted_under_its_reader() {
    // Bigger than loopback socket buffers, so the server is still sending when the pass runs.
    let h = Harness::start_with("", |c| {
        c.storage.disk_capacity = 64 * MIB as u64;
        c.gc.in_use_window = Duration::ZERO;
    })
    .await;
    let layer = bytes_of(40 * MIB, 11);
    let (_, a) = h.upstream.put_image("library/a", "1", std::slice::from_ref(&layer));
    pull_image(&h, "library/a", &a).await;
    // A slow client: it has read a little when a pass wants everything gone.
    let mut body = h.get(&Harness::blob_path("library/a", &a[0])).await.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().to_vec();
    let gc = h.berth.probe();
    let report = gc.collect(0).await;
    assert!(!report.evicted.iter().any(|e| e.digest == a[0].as_str()), "evicted under a reader: {report:?}");
    assert!(on_disk(&h, &a[0]));
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.unwrap());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(got == layer, "the reader got a short or wrong body");
    // Read to the end and gone: now it may go.
    let report = gc.collect(0).await;
    assert!(report.evicted.iter().any(|e| e.digest == a[0].as_str()), "{report:?}");
    assert!(!on_disk(&h, &a[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_lists_images_and_totals_and_survives_a_restart() {
    let h = Harness::start().await;
    let (manifest, a) = h.upstream.put_image("library/a", "1", &[bytes_of(MIB, 12)]);
    pull_image(&h, "library/a", &a).await;
    let cache: Value = h.client.get(admin(&h, "/api/v1/cache")).send().await.unwrap().json().await.unwrap();
    let image = &cache["images"][0];
    assert_eq!(image["digest"], manifest.as_str());
    assert_eq!(image["tags"], json!(["docker.io/library/a:1"]));
    assert_eq!(image["pinned"], false);
    assert_eq!(image["blobs"], 2, "the manifest and the layer (the config was never pulled)");
    assert_eq!(cache["disk"]["used"].as_u64().unwrap(), h.berth.probe().disk_used());
    assert!(cache["disk"]["used"].as_u64().unwrap() > MIB as u64);

    // The same figures after a restart on the same directory.
    let cfg = common::config(h.dir.path(), &[("docker.io", &h.upstream.url())], "");
    let Harness { dir, upstream, berth, client } = h;
    berth.stop().await.unwrap();
    let berth = berth::Server::start(&cfg).await.unwrap();
    let again: Value = client
        .get(format!("http://{}/api/v1/cache", berth.admin_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["disk"], cache["disk"]);
    assert_eq!(again["images"][0]["digest"], cache["images"][0]["digest"]);
    assert_eq!(again["images"][0]["size"], cache["images"][0]["size"]);
    drop((dir, upstream));
}
