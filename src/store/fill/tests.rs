//! Fills driven by in-memory sources (a `Source` built from a stream of `Bytes`), faults
//! included: cut and resumed, wrong, short and long bodies, a slow follower, clients that
//! all leave.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use futures::FutureExt;

use super::{Fill, FillState, Resume, Resumed, Source};
use crate::config::Storage;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::body::{self, BodyStream};
use crate::store::Store;

fn open(dir: &tempfile::TempDir) -> Arc<Store> {
    open_with(dir, 64 << 20)
}

fn open_with(dir: &tempfile::TempDir, disk_capacity: u64) -> Arc<Store> {
    Store::open(&Storage {
        dir: dir.path().to_owned(),
        memory_capacity: 16 << 20,
        memory_max_object: 64 << 10,
        disk_capacity,
        max_fills: 4,
        max_blob_size: 32 << 20,
        fill_connections: 1,
        fill_connections_above: u64::MAX,
    })
    .unwrap()
}

fn content(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// `bytes` in `piece`-sized chunks, then `end` (a cut) if given.
fn chunks(bytes: &Bytes, piece: usize, end: Option<Error>) -> Vec<Result<Bytes, Error>> {
    let mut out: Vec<_> =
        (0..bytes.len()).step_by(piece).map(|i| Ok(bytes.slice(i..bytes.len().min(i + piece)))).collect();
    out.extend(end.map(Err));
    out
}

fn source(len: Option<u64>, items: Vec<Result<Bytes, Error>>) -> Source {
    Source { len, body: stream::iter(items).boxed(), resume: None, rejected: None, hold: None, floor: None }
}

/// A source that ignores Range: every resume sends the whole content again, with what is
/// held to skip. Counts the resumes.
fn resending(whole: Bytes, resumes: Arc<AtomicU32>) -> Resume {
    Box::new(move |from| {
        resumes.fetch_add(1, Ordering::Relaxed);
        let body = stream::iter(chunks(&whole, 100_000, None)).boxed();
        async move { Ok(Resumed { body, skip: from }) }.boxed()
    })
}

/// A source that honours Range: each resume sends `whole` from the offset asked for.
fn ranged(whole: Bytes) -> Resume {
    Box::new(move |from| {
        let body = stream::iter(chunks(&whole.slice(from as usize..), 100_000, None)).boxed();
        async move { Ok(Resumed { body, skip: 0 }) }.boxed()
    })
}

fn start(store: &Arc<Store>, digest: &Digest, source: Source) -> Arc<Fill> {
    store.fill(digest, "test", async move { Ok(source) }.boxed()).0
}

async fn drain(mut body: BodyStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = body.next().await {
        out.extend_from_slice(&b?);
    }
    Ok(out)
}

async fn settled(fill: &Arc<Fill>) {
    tokio::time::timeout(Duration::from_secs(10), fill.settled()).await.expect("the fill settles");
}

/// Nothing of `digest` is kept: not in memory, not on disk, no temp file.
fn nothing_kept(store: &Store, digest: &Digest) {
    assert!(!store.memory.contains(digest), "in memory");
    assert_eq!(store.disk.len(digest).unwrap(), None, "on disk");
    assert_eq!(store.disk.temp_count(), 0, "temp files left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_verified_followed_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(700_000);
    let d = Digest::of(&bytes);
    let fill = start(&store, &d, source(Some(bytes.len() as u64), chunks(&bytes, 50_000, None)));
    let got = drain(body::follow(fill.clone(), 0, Some(bytes.len() as u64))).await.unwrap();
    assert_eq!(got, bytes);
    settled(&fill).await;
    assert_eq!(store.disk.len(&d).unwrap(), Some(bytes.len() as u64));
    assert_eq!(store.disk.temp_count(), 0);
    assert_eq!(store.fills_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_body_is_resumed_and_clients_see_one_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(900_000);
    let d = Digest::of(&bytes);
    let resumes = Arc::new(AtomicU32::new(0));
    let cut = Error::Unavailable("connection reset".into());
    let mut src = source(None, chunks(&bytes.slice(..333_333), 70_000, Some(cut)));
    src.resume = Some(resending(bytes.clone(), resumes.clone()));
    let fill = start(&store, &d, src);
    let got = drain(body::follow(fill.clone(), 0, None)).await.unwrap();
    assert_eq!(got, bytes, "one uninterrupted body");
    assert_eq!(resumes.load(Ordering::Relaxed), 1);
    settled(&fill).await;
    assert_eq!(store.disk.len(&d).unwrap(), Some(bytes.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_fail_the_fill_tell_the_source_and_keep_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(20_000);
    let d = Digest::of(&bytes);
    let mut wrong = bytes.to_vec();
    wrong[12_345] ^= 1;
    let rejected = Arc::new(AtomicBool::new(false));
    let mut src = source(Some(wrong.len() as u64), chunks(&wrong.into(), 4096, None));
    let told = rejected.clone();
    src.rejected = Some(Box::new(move || told.store(true, Ordering::Relaxed)));
    let fill = start(&store, &d, src);
    let got = drain(body::follow(fill.clone(), 0, Some(bytes.len() as u64))).await;
    assert!(got.is_err(), "the client is cut, not given a clean wrong body");
    settled(&fill).await;
    assert!(rejected.load(Ordering::Relaxed), "the source is told");
    nothing_kept(&store, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_with_no_resume_fails_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(600_000);
    let d = Digest::of(&bytes);
    let fill =
        start(&store, &d, source(Some(bytes.len() as u64), chunks(&bytes.slice(..400_000), 64_000, None)));
    let got = drain(body::follow(fill.clone(), 0, Some(bytes.len() as u64))).await;
    assert!(got.is_err());
    settled(&fill).await;
    assert!(matches!(*fill.subscribe().borrow(), FillState::Failed(Error::Unavailable(_))));
    nothing_kept(&store, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_announced_fails_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(300_000);
    let d = Digest::of(&bytes.slice(..200_000));
    let fill = start(&store, &d, source(Some(200_000), chunks(&bytes, 30_000, None)));
    let got = drain(body::follow(fill.clone(), 0, Some(200_000))).await;
    assert!(got.is_err());
    settled(&fill).await;
    assert!(matches!(*fill.subscribe().borrow(), FillState::Failed(Error::Integrity(_))));
    nothing_kept(&store, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_follower_does_not_hold_back_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(3 << 20);
    let d = Digest::of(&bytes);
    let fill = start(&store, &d, source(Some(bytes.len() as u64), chunks(&bytes, 256 << 10, None)));
    let mut slow = body::follow(fill.clone(), 0, Some(bytes.len() as u64));
    let first = slow.next().await.unwrap().unwrap();
    settled(&fill).await;
    assert_eq!(store.disk.len(&d).unwrap(), Some(bytes.len() as u64), "published while a follower lags");
    let mut got = first.to_vec();
    got.extend(drain(slow).await.unwrap());
    assert_eq!(got, bytes);
}

/// A fill of 1 MiB from a `gated` source, started.
struct Gated {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    bytes: Bytes,
    d: Digest,
    fill: Arc<Fill>,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Bytes, Error>>,
}

fn gated_fill() -> Gated {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(1 << 20);
    let d = Digest::of(&bytes);
    let (src, tx) = gated(bytes.len() as u64);
    let fill = start(&store, &d, src);
    Gated { _dir: dir, store, bytes, d, fill, tx }
}

/// A source whose body is sent by the test, piece by piece, through the returned sender.
fn gated(len: u64) -> (Source, tokio::sync::mpsc::UnboundedSender<Result<Bytes, Error>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).boxed();
    (Source { len: Some(len), body, resume: None, rejected: None, hold: None, floor: None }, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_answered_once_its_bytes_are_written_and_a_whole_body_still_waits() {
    let Gated { _dir, store, bytes, d, fill, tx } = gated_fill();
    tx.send(Ok(bytes.slice(..600_000))).unwrap();
    let answer = |r| tokio::time::timeout(Duration::from_secs(5), drain(r));
    // Ranges inside what is written complete, the one ending there too; the whole body and a
    // range reaching past it wait.
    let got = answer(body::range(fill.clone(), 100_000, 600_000)).await.expect("answered at once").unwrap();
    assert_eq!(got, bytes.slice(100_000..600_000));
    let mut whole = body::follow(fill.clone(), 0, Some(bytes.len() as u64));
    let mut past = body::range(fill.clone(), 500_000, 700_000);
    let (mut held, mut partly) = (0, 0);
    while let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(300), whole.next()).await {
        held += b.unwrap().len();
    }
    while let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(300), past.next()).await {
        partly += b.unwrap().len();
    }
    assert_eq!((held, partly), (600_000, 100_000), "only what is written is handed out");
    tx.send(Ok(bytes.slice(600_000..))).unwrap();
    drop(tx);
    let mut rest = drain(whole).await.unwrap();
    assert_eq!(rest.len(), bytes.len() - 600_000);
    rest = drain(past).await.unwrap();
    assert_eq!(rest, bytes.slice(600_000..700_000));
    settled(&fill).await;
    assert_eq!(store.disk.len(&d).unwrap(), Some(bytes.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_answered_before_the_fill_fails_leaves_nothing_kept_and_whole_bodies_cut() {
    let Gated { _dir, store, bytes, d, fill, tx } = gated_fill();
    tx.send(Ok(bytes.slice(..400_000))).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), drain(body::range(fill.clone(), 0, 4096)))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(got, bytes.slice(..4096));
    let whole = body::follow(fill.clone(), 0, Some(bytes.len() as u64));
    let late = body::range(fill.clone(), 900_000, 1 << 20);
    let mut wrong = bytes.slice(400_000..).to_vec();
    wrong[1] ^= 1;
    tx.send(Ok(wrong.into())).unwrap();
    drop(tx);
    assert!(drain(whole).await.is_err(), "a whole body of wrong content is cut");
    assert!(drain(late).await.is_err(), "a range still waiting when the fill fails is cut");
    settled(&fill).await;
    nothing_kept(&store, &d);
}

/// Sets its flag when dropped: tells whether a fetch was given up.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_every_client_left_before_its_source_answered_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let d = Digest::of(b"never fetched");
    let given_up = Arc::new(AtomicBool::new(false));
    let guard = Dropped(given_up.clone());
    let fetch = async move {
        let _guard = guard;
        futures::future::pending::<Result<Source, Error>>().await
    };
    let (fill, _) = store.fill(&d, "test", fetch.boxed());
    let mut state = fill.subscribe();
    drop(fill);
    let failed =
        tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| matches!(s, FillState::Failed(_))));
    failed.await.expect("given up").unwrap();
    assert!(given_up.load(Ordering::Relaxed), "the fetch is dropped");
    // The fill leaves the in-flight map just after it is failed.
    until(|| store.fills_in_flight() == 0).await;
    nothing_kept(&store, &d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_outlives_clients_that_leave_after_its_source_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(1 << 20);
    let d = Digest::of(&bytes);
    let slow = stream::iter(chunks(&bytes, 128 << 10, None)).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c
    });
    let src = Source { body: slow.boxed(), ..source(Some(bytes.len() as u64), Vec::new()) };
    let fill = start(&store, &d, src);
    fill.ready().await.unwrap();
    let mut state = fill.subscribe();
    drop(fill);
    let verified = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, FillState::Verified { .. })),
    );
    verified.await.expect("verified").unwrap();
    drop(state);
    until(|| store.disk.len(&d).unwrap().is_some()).await;
}

/// Waits (10 s at most) until `done`.
async fn until(done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_announced_beyond_the_disk_passes_through_verified_and_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, 1 << 20);
    let bytes = content(3 << 19);
    let d = Digest::of(&bytes);
    let len = bytes.len() as u64;
    let mut src = source(Some(len), chunks(&bytes, 100_000, None));
    src.resume = Some(ranged(bytes.clone()));
    let fill = start(&store, &d, src);
    assert_eq!(drain(body::follow(fill.clone(), 0, Some(len))).await.unwrap(), bytes);
    let mut wrong = bytes.to_vec();
    wrong[1000] ^= 1;
    let mut src = source(Some(len), Vec::new());
    src.resume = Some(ranged(wrong.into()));
    settled(&fill).await;
    let fill = start(&store, &d, src);
    assert!(
        drain(body::follow(fill.clone(), 0, Some(len))).await.is_err(),
        "wrong bytes passed through are cut"
    );
    settled(&fill).await;
    nothing_kept(&store, &d);
    assert_eq!(store.uncached(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchecked_damaged_file_is_not_served_by_a_fill_but_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = content(300_000);
    let d = Digest::of(&bytes);
    // A file on disk that does not match (damaged while berth was down), counted at startup.
    let path = open(&dir).disk.path(&d);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, vec![0u8; bytes.len()]).unwrap();
    let store = open(&dir);
    let fill = start(&store, &d, source(Some(bytes.len() as u64), chunks(&bytes, 50_000, None)));
    let got = drain(body::follow(fill.clone(), 0, Some(bytes.len() as u64))).await.unwrap();
    assert!(got == bytes, "the damaged file was served");
    settled(&fill).await;
    assert!(std::fs::read(&path).unwrap() == bytes, "the verified copy did not replace it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_blob_that_comes_back_damaged_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bytes = content(300_000);
    let d = Digest::of(&bytes);
    let fill = start(&store, &d, source(Some(bytes.len() as u64), chunks(&bytes, 50_000, None)));
    drain(body::follow(fill.clone(), 0, Some(bytes.len() as u64))).await.unwrap();
    settled(&fill).await;
    assert!(store.get(&d).await.is_some());
    store.evict_blocking(&d).unwrap();
    std::fs::write(store.disk.path(&d), vec![0u8; bytes.len()]).unwrap();
    assert!(store.get(&d).await.is_none(), "served on the check of the evicted copy");
}
