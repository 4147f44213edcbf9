//! A cut upstream body is resumed with Range, hashing on from where it was; clients see one
//! uninterrupted, verified body.

use crate::common;

use common::{bytes_of, Fault, Harness};
use http::{Method, StatusCode};

const REPO: &str = "library/app";

async fn cut_once(honour_range: bool) {
    let h = Harness::start().await;
    let blob = bytes_of(3 << 20, 1);
    let d = h.upstream.add_blob(blob.clone());
    let at = 1_234_567;
    h.upstream.fault(&d, Fault::CutOnce { at, honour_range });
    let path = Harness::blob_path(REPO, &d);
    let gets = (0..3).map(|_| h.get(&path));
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap() == blob, "a client saw the cut");
    }
    let log: Vec<_> = h
        .upstream
        .log()
        .into_iter()
        .filter(|l| l.method == Method::GET && l.path.contains(d.as_str()))
        .collect();
    assert_eq!(log.len(), 2, "one GET and one resume: {log:?}");
    let resumed_from: usize =
        log[1].range.as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(resumed_from > 0 && resumed_from <= at, "resumed from {resumed_from}");
    h.settle().await;
    assert!(h.stored_blobs().contains(&d.hex().to_owned()), "the resumed blob was not kept");
    h.upstream.stop();
    assert!(h.get(&path).await.bytes().await.unwrap() == blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_body_is_resumed_with_range() {
    cut_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_ignores_range_is_skipped_past_what_was_written() {
    cut_once(false).await;
}
