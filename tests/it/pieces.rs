//! Cold fills of large blobs over several connections (`[storage] fill_connections`): one
//! fill, its own GET for the first piece and ranges beside it for the rest, handed on in
//! order; an upstream that ignores Range, answers another span or cuts a piece still gives
//! the blob whole and verified.

use crate::common;

use std::time::Duration;

use common::{bytes_of, Fault, Harness, Logged};
use http::{Method, StatusCode};

const REPO: &str = "library/app";
const LEN: usize = 24 << 20;
/// The piece size for `LEN` over 4 connections: `LEN / 8`.
const PIECE: usize = LEN / 8;

async fn split_harness(max_fills: usize) -> Harness {
    Harness::start_with("", |c| {
        c.storage.fill_connections = 4;
        c.storage.fill_connections_above = 1 << 20;
        c.storage.max_fills = max_fills;
    })
    .await
}

/// The upstream GETs of `digest`: those without Range, and the closed ranges asked.
fn gets(h: &Harness, digest: &str) -> (usize, Vec<(usize, usize)>) {
    let log: Vec<Logged> =
        h.upstream.log().into_iter().filter(|l| l.method == Method::GET && l.path.contains(digest)).collect();
    let whole = log.iter().filter(|l| l.range.is_none()).count();
    let mut ranges: Vec<(usize, usize)> = log
        .iter()
        .filter_map(|l| {
            l.range
                .as_deref()?
                .strip_prefix("bytes=")?
                .split_once('-')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
        .filter_map(|(a, b)| Some((a.parse().ok()?, b.parse::<usize>().ok()? + 1)))
        .collect();
    ranges.sort_unstable();
    (whole, ranges)
}

/// Pulls the blob whole, with a follower that joins part-way, and checks both and the store.
async fn pull_whole(h: &Harness, blob: &bytes::Bytes, d: &berth::oci::digest::Digest) {
    let path = Harness::blob_path(REPO, d);
    let leader = h.get(&path);
    let follower = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.get(&path).await
    };
    let (a, b) = tokio::join!(leader, follower);
    for r in [a, b] {
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap() == *blob, "a body differs from the blob");
    }
    h.settle().await;
    assert!(h.stored_blobs().contains(&d.hex().to_owned()), "the blob was not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_cold_blob_is_filled_over_several_connections_each_byte_fetched_once() {
    let h = split_harness(64).await;
    let blob = bytes_of(LEN, 60);
    let d = h.upstream.add_blob(blob.clone());
    // The whole-blob GET is slow (10 MiB/s); ranges come at once.
    h.upstream.fault(&d, Fault::Slow { chunk: 256 << 10, delay: Duration::from_millis(25) });
    pull_whole(&h, &blob, &d).await;
    let (whole, ranges) = gets(&h, d.as_str());
    assert_eq!(whole, 1, "one fill, one GET of the whole blob");
    // The ranges cover everything past the first piece exactly once, in pieces.
    let mut at = PIECE;
    for &(a, b) in &ranges {
        assert_eq!(a, at, "ranges {ranges:?} leave a gap or overlap");
        assert!(b - a <= PIECE);
        at = b;
    }
    assert_eq!(at, LEN, "ranges {ranges:?} do not reach the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_ignores_range_or_answers_another_span_fills_from_one_stream() {
    for (seed, fault) in [
        (61, Fault::SlowNoRanges { chunk: 1 << 20, delay: Duration::from_millis(10) }),
        (62, Fault::SlowWrongRange { chunk: 1 << 20, delay: Duration::from_millis(10) }),
    ] {
        let h = split_harness(64).await;
        let blob = bytes_of(LEN, seed);
        let d = h.upstream.add_blob(blob.clone());
        h.upstream.fault(&d, fault.clone());
        pull_whole(&h, &blob, &d).await;
        let (whole, ranges) = gets(&h, d.as_str());
        // One piece asked, then the fill's own GET read to its end.
        assert_eq!((whole, ranges.len()), (1, 1), "{fault:?}: {ranges:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_piece_cut_part_way_is_resumed_and_the_blob_is_still_whole_and_verified() {
    let h = split_harness(64).await;
    let blob = bytes_of(LEN, 63);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::SlowCutRanges { chunk: 1 << 20, delay: Duration::from_millis(10) });
    pull_whole(&h, &blob, &d).await;
    let (whole, ranges) = gets(&h, d.as_str());
    assert!(whole == 1 && !ranges.is_empty(), "no piece was asked: {ranges:?}");
    let resumed = h.upstream.log().iter().any(|l| l.range.as_deref().is_some_and(|r| r.ends_with('-')));
    assert!(resumed, "the cut piece was not resumed from what the fill held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extra_connections_only_take_free_turns() {
    // One turn for the registry: the fill holds it, and no piece is asked beside it.
    let h = split_harness(1).await;
    let blob = bytes_of(LEN, 64);
    let d = h.upstream.add_blob(blob.clone());
    pull_whole(&h, &blob, &d).await;
    let (whole, ranges) = gets(&h, d.as_str());
    assert_eq!((whole, ranges.len()), (1, 0), "{ranges:?}");
}
