//! Blob path: single fill, followers, verification, Range.

use crate::common;

use std::time::Duration;

use common::{bytes_of, Fault, Harness};
use futures::StreamExt;
use http::{Method, StatusCode};

const REPO: &str = "library/app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_gets_share_one_upstream_fetch() {
    let h = Harness::start().await;
    let blob = bytes_of(3 << 20, 1);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::Slow { chunk: 128 << 10, delay: Duration::from_millis(5) });
    let path = Harness::blob_path(REPO, &d);
    let gets = (0..32).map(|_| {
        let (client, url) = (h.client.clone(), h.url(&path));
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap()
        })
    });
    for body in futures::future::join_all(gets).await {
        assert!(body.unwrap() == blob, "a body differs from the blob");
    }
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1, "upstream GETs for 32 concurrent pulls");
    // And the next pull is a hit.
    assert_eq!(h.get(&path).await.bytes().await.unwrap(), blob);
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiner_gets_bytes_before_the_fill_completes() {
    let h = Harness::start().await;
    let blob = bytes_of(2 << 20, 2);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::Slow { chunk: 64 << 10, delay: Duration::from_millis(40) });
    let path = Harness::blob_path(REPO, &d);

    let first = h.get(&path).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = h.get(&path).await;
    assert_eq!(late.status(), StatusCode::OK);
    assert_eq!(late.content_length(), Some(blob.len() as u64));
    let mut late_stream = late.bytes_stream();
    let first_chunk = late_stream.next().await.unwrap().unwrap();
    assert!(!first_chunk.is_empty());
    assert_eq!(
        h.berth.probe().fills_in_flight(),
        1,
        "the fill had finished before the late joiner's first bytes"
    );

    let mut got = first_chunk.to_vec();
    while let Some(c) = late_stream.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert!(got == blob, "late joiner's body differs");
    assert!(first.bytes().await.unwrap() == blob, "first client's body differs");
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_does_not_cancel_the_fill() {
    let h = Harness::start().await;
    let blob = bytes_of(1 << 20, 3);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::Slow { chunk: 64 << 10, delay: Duration::from_millis(10) });
    let path = Harness::blob_path(REPO, &d);
    let mut s = h.get(&path).await.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);
    h.settle().await;
    h.upstream.stop();
    assert!(h.get(&path).await.bytes().await.unwrap() == blob);
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1);
}

async fn bad_body_is_aborted_and_not_cached(fault: Fault) {
    let h = Harness::start().await;
    let blob = bytes_of(3 << 20, 4);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, fault);
    let path = Harness::blob_path(REPO, &d);

    let r = h.get(&path).await;
    assert_eq!(r.status(), StatusCode::OK, "headers go out before the body is verified");
    assert!(r.bytes().await.is_err(), "a bad body must end with a cut connection, not a clean response");
    h.settle().await;
    assert!(!h.stored_blobs().contains(&d.hex().to_owned()), "bad bytes were published to disk");
    assert_eq!(h.temp_files(), 0, "temp file left behind");

    // The next GET fetches again and, with upstream fixed, succeeds.
    let before = h.upstream.count(Method::GET, d.as_str());
    h.upstream.clear_fault(&d);
    assert!(h.get(&path).await.bytes().await.unwrap() == blob);
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), before + 1);
    h.settle().await;
    assert!(h.stored_blobs().contains(&d.hex().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_upstream_bytes_abort_the_client_and_are_not_cached() {
    bad_body_is_aborted_and_not_cached(Fault::Corrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_upstream_body_aborts_the_client_and_is_not_cached() {
    bad_body_is_aborted_and_not_cached(Fault::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_without_content_length_is_verified_and_shared() {
    let h = Harness::start().await;
    let blob = bytes_of(3 << 20, 12);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::NoLength);
    let path = Harness::blob_path(REPO, &d);
    let gets = (0..4).map(|_| h.get(&path));
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.content_length(), Some(blob.len() as u64));
        assert!(r.bytes().await.unwrap() == blob);
    }
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1);
    // A corrupt body without a length is caught as well.
    let bad = bytes_of(1 << 20, 13);
    let mut served = bad.to_vec();
    served[10] ^= 1;
    let bad_digest = berth::oci::digest::Digest::of(&bad);
    h.upstream.state.blobs.lock().unwrap().insert(bad_digest.to_string(), served.into());
    h.upstream.fault(&bad_digest, Fault::NoLength);
    let r = h.get(&Harness::blob_path(REPO, &bad_digest)).await;
    assert!(r.status() != StatusCode::OK || r.bytes().await.is_err());
    h.settle().await;
    assert!(!h.stored_blobs().contains(&bad_digest.hex().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_upstream_is_cut_by_the_read_timeout_and_given_up_after_bounded_resumes() {
    let h = Harness::start_with("", |c| c.registries[0].read_timeout = Duration::from_secs(1)).await;
    let blob = bytes_of(1 << 20, 10);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::Stall);
    let started = std::time::Instant::now();
    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert!(r.bytes().await.is_err(), "a stalled fill must cut the client");
    // Four 1 s stalls (the first GET and three resumes) and the backoff between them.
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 4, "resumes are bounded");
    h.settle().await;
    assert_eq!(h.temp_files(), 0);
    assert!(!h.stored_blobs().contains(&d.hex().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_5xx_is_503_unavailable() {
    let h = Harness::start().await;
    let d = h.upstream.add_blob(bytes_of(1000, 11));
    h.upstream.fault(&d, Fault::Status(502));
    let r = h.get(&Harness::blob_path(REPO, &d)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(h.temp_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_small_blob_never_reaches_the_memory_tier() {
    let h = Harness::start().await;
    let blob = bytes_of(100 << 10, 5);
    let d = h.upstream.add_blob(blob.clone());
    h.upstream.fault(&d, Fault::Corrupt);
    let path = Harness::blob_path(REPO, &d);
    assert!(h.get(&path).await.bytes().await.is_err());
    assert!(!h.berth.probe().in_memory(&d));
    h.upstream.clear_fault(&d);
    assert!(h.get(&path).await.bytes().await.unwrap() == blob);
}

async fn range(h: &Harness, path: &str, range: &str) -> (StatusCode, Option<String>, bytes::Bytes) {
    let r = h.client.get(h.url(path)).header("Range", range).send().await.unwrap();
    let status = r.status();
    let cr = r.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned());
    (status, cr, r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_on_memory_disk_and_in_flight_fills() {
    let h = Harness::start().await;
    let small = bytes_of(300 << 10, 6); // memory tier (max object 1 MiB)
    let large = bytes_of(3 << 20, 7); // disk tier only
    let slow = bytes_of(2 << 20, 8); // read while its fill runs
    let (ds, dl, dw) = (
        h.upstream.add_blob(small.clone()),
        h.upstream.add_blob(large.clone()),
        h.upstream.add_blob(slow.clone()),
    );
    let (ps, pl, pw) =
        (Harness::blob_path(REPO, &ds), Harness::blob_path(REPO, &dl), Harness::blob_path(REPO, &dw));

    // Memory: fill it, then remove the disk copy so only memory can answer.
    h.get(&ps).await.bytes().await.unwrap();
    h.settle().await;
    assert!(h.berth.probe().in_memory(&ds));
    std::fs::remove_file(h.berth.probe().disk_path(&ds)).unwrap();
    let (st, cr, body) = range(&h, &ps, "bytes=1000-").await;
    assert_eq!(
        (st, cr.as_deref()),
        (
            StatusCode::PARTIAL_CONTENT,
            Some(format!("bytes 1000-{}/{}", small.len() - 1, small.len())).as_deref()
        )
    );
    assert!(body == small.slice(1000..));
    let (st, _, body) = range(&h, &ps, "bytes=10-19").await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert!(body == small.slice(10..20));

    // Disk.
    h.get(&pl).await.bytes().await.unwrap();
    h.settle().await;
    assert!(!h.berth.probe().in_memory(&dl));
    let (st, cr, body) = range(&h, &pl, "bytes=2097152-").await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr.unwrap(), format!("bytes 2097152-{}/{}", large.len() - 1, large.len()));
    assert!(body == large.slice(2097152..));
    let (st, _, body) = range(&h, &pl, "bytes=-100").await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert!(body == large.slice(large.len() - 100..));

    // In flight: the range is served from the fill as it is written.
    h.upstream.fault(&dw, Fault::Slow { chunk: 64 << 10, delay: Duration::from_millis(20) });
    let whole = h.get(&pw).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.berth.probe().fills_in_flight(), 1);
    let (st, cr, body) = range(&h, &pw, "bytes=1048576-").await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr.unwrap(), format!("bytes 1048576-{}/{}", slow.len() - 1, slow.len()));
    assert!(body == slow.slice(1048576..));
    assert!(whole.bytes().await.unwrap() == slow);
    assert_eq!(h.upstream.count(Method::GET, dw.as_str()), 1);

    // Unsatisfiable.
    let r = h.client.get(h.url(&pl)).header("Range", format!("bytes={}-", large.len())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], format!("bytes */{}", large.len()).as_str());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "RANGE_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_is_answered_from_what_a_stalled_fill_has_written() {
    let h = Harness::start().await;
    let blob = bytes_of(2 << 20, 10);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    // Upstream sends the first half, then nothing: the fill is in flight and unverified.
    h.upstream.fault(&d, Fault::Stall);
    let whole = h.get(&path).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let early = tokio::time::timeout(Duration::from_secs(5), range(&h, &path, "bytes=1000-66535"))
        .await
        .expect("a range inside what is written is answered before the fill ends");
    assert_eq!(early.0, StatusCode::PARTIAL_CONTENT);
    assert_eq!(early.1.unwrap(), format!("bytes 1000-66535/{}", blob.len()));
    assert!(early.2 == blob.slice(1000..66536));
    assert_eq!(h.berth.probe().fills_in_flight(), 1, "answered from the fill in flight");
    // A range of bytes not written yet waits for them: its head comes, its body does not end.
    let tail = h.client.get(h.url(&path)).header("Range", "bytes=-100").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert!(tokio::time::timeout(Duration::from_millis(500), tail.bytes()).await.is_err());
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 1, "the ranges joined the one fill");
    drop(whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_far_ahead_of_a_slow_fill_is_fetched_on_its_own_and_the_fill_goes_on() {
    let h = Harness::start().await;
    let blob = bytes_of(48 << 20, 14);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    // 10 MiB/s: the whole blob takes about 5 s.
    h.upstream.fault(&d, Fault::Slow { chunk: 256 << 10, delay: Duration::from_millis(25) });
    let n = blob.len();
    let timed = |ask: &'static str| {
        let (client, url) = (h.client.clone(), h.url(&path));
        async move {
            let r = client.get(url).header("Range", ask).send().await.unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (r.status(), ct, r.bytes().await.unwrap())
        }
    };
    let (st, _, tail) = tokio::time::timeout(Duration::from_secs(2), timed("bytes=-65536"))
        .await
        .expect("the footer at once");
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert!(tail == blob.slice(n - 65536..));
    let (st, ct, body) =
        tokio::time::timeout(Duration::from_secs(2), timed("bytes=40000000-40000099,45000000-45000099"))
            .await
            .expect("chunks at once");
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    let parts = byteranges(&ct, &body);
    assert_eq!(parts[1].1, blob[45_000_000..45_000_100].to_vec());
    assert_eq!(h.berth.probe().fills_in_flight(), 1, "the one fill goes on");
    // A span past AHEAD_SPAN (16 MiB) waits for the fill instead.
    let big = tokio::time::timeout(Duration::from_millis(600), timed("bytes=30000000-49999999")).await;
    assert!(big.is_err(), "a large span far ahead waits for the fill");
    for _ in 0..300 {
        if h.berth.probe().fills_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gets: Vec<_> = h.upstream.log().into_iter().filter(|l| l.path.contains(d.hex())).collect();
    assert_eq!(gets.iter().filter(|l| l.range.is_none()).count(), 1, "one full fetch");
    assert_eq!(gets.iter().filter(|l| l.range.is_some()).count(), 3, "a request per range ahead");
    assert!(h.stored_blobs().contains(&d.hex().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_ahead_of_one_fill_cost_upstream_at_most_the_blobs_length() {
    let h = Harness::start().await;
    let blob = bytes_of(40 << 20, 16);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    // 4 MiB/s: the fill is far behind every range below for the whole test.
    h.upstream.fault(&d, Fault::Slow { chunk: 128 << 10, delay: Duration::from_millis(30) });
    let first = h.client.get(h.url(&path)).header("range", "bytes=0-0").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    // Eight 15 MiB spans far ahead, one after another: 120 MiB asked of a 40 MiB blob.
    let span = 15u64 << 20;
    let mut fast = 0;
    for i in 0..8u64 {
        let start = (20 << 20) + i * 1000;
        let ask = format!("bytes={start}-{}", start + span - 1);
        let r = h.client.get(h.url(&path)).header("range", ask).send();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(800), r).await {
            if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_millis(800), r.bytes()).await {
                assert!(body == blob.slice(start as usize..(start + span) as usize));
                fast += 1;
            }
        }
    }
    let ahead: u64 = h
        .upstream
        .log()
        .iter()
        .filter(|l| {
            l.path.contains(d.hex()) && l.range.as_deref().is_some_and(|r| !r.starts_with("bytes=0-0"))
        })
        .count() as u64;
    // Answers past the budget wait for the slow fill (timed out above): only asked ranges count.
    assert!(ahead >= 1, "no range was fetched ahead ({fast} answered at once)");
    assert!(ahead * span <= 40 << 20, "{ahead} spans of 15 MiB asked of upstream for a 40 MiB blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_ahead_that_upstream_answers_for_other_bytes_waits_for_the_fill() {
    let h = Harness::start().await;
    let blob = bytes_of(12 << 20, 15);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    h.upstream.fault(&d, Fault::SlowWrongRange { chunk: 256 << 10, delay: Duration::from_millis(20) });
    let r = h.client.get(h.url(&path)).header("Range", "bytes=-100").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(
        r.bytes().await.unwrap() == blob.slice(blob.len() - 100..),
        "the fill's bytes, not the shifted ones"
    );
    assert!(h.upstream.log().iter().any(|l| l.range.as_deref() == Some("bytes=12582812-12582911")));
}

/// The parts of a `multipart/byteranges` answer, read strictly: each part's `Content-Range`
/// and bytes, the lengths from the part headers, the boundary where RFC 9110 puts it.
fn byteranges(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").expect(content_type);
    let (open, close) = (format!("\r\n--{boundary}\r\n"), format!("\r\n--{boundary}--\r\n"));
    let mut rest = body;
    let mut parts = Vec::new();
    while rest.starts_with(open.as_bytes()) {
        rest = &rest[open.len()..];
        let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("part headers end");
        let head = std::str::from_utf8(&rest[..head_end]).unwrap();
        rest = &rest[head_end + 4..];
        assert!(head.lines().any(|l| l == "Content-Type: application/octet-stream"), "{head}");
        let range =
            head.lines().find_map(|l| l.strip_prefix("Content-Range: bytes ")).expect(head).to_owned();
        let (first, last) = range.split_once('/').unwrap().0.split_once('-').unwrap();
        let n = last.parse::<usize>().unwrap() - first.parse::<usize>().unwrap() + 1;
        parts.push((range, rest[..n].to_vec()));
        rest = &rest[n..];
    }
    assert_eq!(rest, close.as_bytes(), "the body ends with the closing boundary");
    parts
}

async fn multi(h: &Harness, path: &str, ranges: &str) -> reqwest::Response {
    h.client.get(h.url(path)).header("Range", ranges).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_ranges_get_multipart_byteranges_on_hits_and_fills_in_flight() {
    let h = Harness::start().await;
    let (small, large) = (bytes_of(300 << 10, 11), bytes_of(3 << 20, 12));
    let (ds, dl) = (h.upstream.add_blob(small.clone()), h.upstream.add_blob(large.clone()));
    let (ps, pl) = (Harness::blob_path(REPO, &ds), Harness::blob_path(REPO, &dl));
    // In flight (slow), then from disk; the small one from memory.
    h.upstream.fault(&dl, Fault::Slow { chunk: 64 << 10, delay: Duration::from_millis(10) });
    h.get(&ps).await.bytes().await.unwrap();
    let whole = h.get(&pl).await;
    for (path, blob) in [(&pl, &large), (&ps, &small)] {
        let ask = "bytes=200000-200099, 0-9, -5";
        let r = multi(&h, path, ask).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(r.headers().get("content-range").is_none());
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let declared: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), declared);
        let n = blob.len();
        let got = byteranges(&ct, &body);
        let want = vec![
            (format!("200000-200099/{n}"), blob[200_000..200_100].to_vec()),
            (format!("0-9/{n}"), blob[..10].to_vec()),
            (format!("{}-{}/{n}", n - 5, n - 1), blob[n - 5..].to_vec()),
        ];
        assert!(got == want, "parts of {path} in the order asked");
    }
    assert!(whole.bytes().await.unwrap() == large);
    h.settle().await;
    let r = multi(&h, &pl, "bytes=1-2,3000000-3000001").await;
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(byteranges(&ct, &r.bytes().await.unwrap()).len(), 2, "from disk");
    // Two answers never share a boundary.
    let (a, b) = (multi(&h, &ps, "bytes=0-0,9999-9999").await, multi(&h, &ps, "bytes=0-0,9999-9999").await);
    assert_ne!(a.headers()["content-type"], b.headers()["content-type"]);
    assert_eq!(h.upstream.count(Method::GET, dl.as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_range_sets_are_merged_dropped_or_ignored_never_amplified() {
    let h = Harness::start().await;
    let blob = bytes_of(1 << 20, 13);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    h.get(&path).await.bytes().await.unwrap();
    h.settle().await;
    // The same range many times, and overlapping ones: one part, not the blob many times.
    let r = multi(&h, &path, &format!("bytes={}", vec!["0-"; 200].join(","))).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], format!("bytes 0-{}/{}", blob.len() - 1, blob.len()).as_str());
    assert_eq!(r.bytes().await.unwrap().len(), blob.len());
    let r = multi(&h, &path, "bytes=100-199,150-299,290-310").await;
    assert_eq!(r.headers()["content-range"], format!("bytes 100-310/{}", blob.len()).as_str());
    // Unsatisfiable ranges are dropped; none satisfiable is a 416.
    let r = multi(&h, &path, "bytes=99999999-,10-19").await;
    assert_eq!(r.headers()["content-range"], format!("bytes 10-19/{}", blob.len()).as_str());
    assert!(r.bytes().await.unwrap() == blob.slice(10..20));
    let r = multi(&h, &path, "bytes=99999999-,88888888-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Too many ranges, bad syntax, huge numbers: the header is ignored and the blob sent.
    let many = (0..300).map(|i| format!("{}-{}", i * 1000, i * 1000)).collect::<Vec<_>>().join(",");
    for ask in [format!("bytes={many}"), "bytes=0-1,x".into(), "bytes=0-99999999999999999999999,1-2".into()] {
        let r = multi(&h, &path, &ask).await;
        assert_eq!(r.status(), StatusCode::OK, "{ask:.40}");
        assert!(r.bytes().await.unwrap() == blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_and_get_answer_the_same_headers() {
    let h = Harness::start().await;
    let blob = bytes_of(5000, 9);
    let d = h.upstream.add_blob(blob.clone());
    let path = Harness::blob_path(REPO, &d);
    // HEAD before any GET asks upstream and starts no fill.
    let head = h.client.head(h.url(&path)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(h.upstream.count(Method::GET, d.as_str()), 0);
    let get = h.get(&path).await;
    for name in ["content-length", "docker-content-digest", "content-type", "etag", "accept-ranges"] {
        assert_eq!(head.headers().get(name), get.headers().get(name), "{name}");
    }
    assert_eq!(get.headers()["docker-content-digest"], d.as_str());
    assert_eq!(get.headers()["content-length"], "5000");

    let missing = berth::oci::digest::Digest::of(b"nope");
    let r = h.get(&Harness::blob_path(REPO, &missing)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_beyond_max_fills_wait_their_turn() {
    let h = Harness::start_with("", |c| c.storage.max_fills = 1).await;
    let (a, b) = (bytes_of(1 << 20, 31), bytes_of(1 << 20, 32));
    let (da, db) = (h.upstream.add_blob(a.clone()), h.upstream.add_blob(b.clone()));
    h.upstream.fault(&da, Fault::Slow { chunk: 64 << 10, delay: Duration::from_millis(60) });
    let first = tokio::spawn({
        let (client, url) = (h.client.clone(), h.url(&Harness::blob_path(REPO, &da)));
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn({
        let (client, url) = (h.client.clone(), h.url(&Harness::blob_path(REPO, &db)));
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    // While the first fill runs, the second waits for its turn without asking upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.upstream.count(Method::GET, db.as_str()), 0, "a second fill ran beside the first");
    assert!(first.await.unwrap() == a);
    assert!(second.await.unwrap() == b);
    assert_eq!(h.upstream.count(Method::GET, db.as_str()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_cannot_write_passes_blobs_through_verified() {
    let h = Harness::start().await;
    let blob = bytes_of(3 << 20, 41);
    let d = h.upstream.add_blob(blob.clone());
    // No temp file can be made: the temp folder is now a file.
    let tmp = h.dir.path().join("v1/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let path = Harness::blob_path(REPO, &d);
    let gets = (0..3).map(|_| h.get(&path));
    for r in futures::future::join_all(gets).await {
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().await.unwrap() == blob, "a pass-through body differs");
    }
    let ranged = h.client.get(h.url(&path)).header("range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap(), blob.slice(1000..2000));
    // Several ranges cost one request to the source each at most, never a whole blob each.
    h.upstream.clear_log();
    let parts = "bytes=0-99,1000000-1000099,2000000-2000099,3000000-3000099";
    let multi = h.client.get(h.url(&path)).header("range", parts).send().await.unwrap();
    assert_eq!(multi.status(), StatusCode::PARTIAL_CONTENT);
    let body = multi.bytes().await.unwrap();
    assert!(body.windows(100).any(|w| w == &blob[2000000..2000100]), "a part is missing");
    let asked: Vec<_> = h.upstream.log().into_iter().filter(|l| l.path.contains(d.as_str())).collect();
    let whole = asked.iter().filter(|l| l.range.is_none()).count();
    assert!(
        whole <= 1 && asked.len() <= 5,
        "{asked:?}: upstream requests for 4 ranges of a pass-through blob"
    );
    h.settle().await;
    assert!(!h.stored_blobs().contains(&d.hex().to_owned()), "a blob was kept");
    assert!(!h.berth.probe().in_memory(&d));

    // Wrong bytes from upstream are still refused: the body does not end as complete.
    let bad = bytes_of(1 << 20, 42);
    let bd = h.upstream.add_blob(bad.clone());
    h.upstream.fault(&bd, Fault::Corrupt);
    let r = h.get(&Harness::blob_path(REPO, &bd)).await;
    assert!(r.bytes().await.map(|b| b != bad).unwrap_or(true), "corrupt bytes passed through as complete");
}
