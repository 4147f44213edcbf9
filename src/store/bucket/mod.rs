//! The bucket below the disk tier, as the store uses it (`[bucket]`): the source a fill asks
//! before its own, uploads of verified content after it is published, and the health that
//! leaves a failing bucket alone for a while.
//!
//! - A fill's bytes from the bucket are hashed as they arrive, shown a part at a time once
//!   each matches its checksum (`parts`), or, without checksums, to nobody before the whole
//!   verifies (see `fill::lead`); an object that does not match is deleted, counted, and
//!   fetched from the fill's own source, whose verified copy replaces it.
//! - An object is used for a fill only when it was uploaded under the fill's origin (the
//!   registries that uploaded it, kept in the object's `registry` metadata): content is not
//!   shared across registries through the bucket either. A second registry's upload of the
//!   same digest puts it again with both in the label.
//! - A bucket that errs or is slower than `timeout` is skipped, then left alone for a backoff
//!   that doubles from 1 s to 60 s, and asked again after it: never a restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, GetRange, GetResult, ObjectStore};

use crate::config::{self, MinRate};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::fill::{Resume, Resumed, Source};

mod inventory;
pub(crate) mod lease;
mod manifests;
pub(crate) mod parts;
mod tags;
mod upload;

pub(crate) use lease::{Claimed, Seen};
use manifests::is_manifest_type;
pub(crate) use upload::Kind;

/// Uploads at once.
const UPLOADS_AT_ONCE: usize = 4;
/// Fills reading from the bucket at once; more wait for a turn.
const READS_AT_ONCE: usize = 16;
/// The slowest a whole bucket read may go: past `timeout` plus its length at this rate, the
/// fill moves on to its source.
const READ_RATE: u64 = 16 * 1024 * 1024;
/// A manifest object larger than this is not read (manifests are at most 4 MiB).
pub(super) const MANIFEST_MAX: u64 = 4 * 1024 * 1024;
/// The slowest a body from the bucket may arrive, over each `timeout`.
const FLOOR: u64 = 1024 * 1024;

pub(crate) struct Bucket {
    /// Reads, leases and tags: every request bounded by `timeout`.
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/v1`.
    root: Path,
    /// Uploads: no read timeout (sending a part takes as long as it takes), each put bounded
    /// by `timeout` plus its length at 1 MiB/s.
    writes: Arc<dyn ObjectStore>,
    blobs: Path,
    manifests: Path,
    tags: Path,
    fills: Path,
    /// Who this berth is in a lease (its peer URL, or its host name and listen address).
    identity: String,
    /// The peer token, with `[peers]`: fill leases are signed with it (`lease`).
    lease_key: Option<crate::config::Secret>,
    fill_lease: Duration,
    url: String,
    timeout: Duration,
    uploads: bool,
    health: Health,
    turns: Arc<tokio::sync::Semaphore>,
    /// Digests whose object was found wrong: uploaded again without asking whether one is
    /// there.
    suspect: Mutex<HashSet<Digest>>,
    /// Uploads that failed every attempt, for the next retry round (and whether a round is
    /// scheduled).
    later: Mutex<HashMap<(Digest, Kind), u32>>,
    /// Uploads spawned and not yet ended: past `QUEUE_MAX`, new ones wait for a retry round.
    queued: AtomicUsize,
    /// Fills reading from the bucket at once.
    reads: Arc<tokio::sync::Semaphore>,
    /// Blobs this berth knows to be in the bucket (uploaded, found, or read), the most
    /// recent 100,000: what preheat's status says of the bucket tier.
    known: moka::sync::Cache<Digest, ()>,
    /// Markers this berth wrote (or found fresh) in the last day.
    marked: moka::sync::Cache<(&'static str, Digest), ()>,
    /// Marker writes at once.
    marking: Arc<tokio::sync::Semaphore>,
    /// What the fleet's last GC pass counted: objects, bytes, when.
    inventory: Mutex<Option<(u64, u64, u64)>>,
    round: std::sync::atomic::AtomicBool,
}

/// The bucket as the cache API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Status {
    pub(crate) url: String,
    /// False while it is left alone after a failure.
    pub(crate) up: bool,
    /// Whether verified content is uploaded (`upload = "background"`).
    pub(crate) uploads: bool,
    /// Uploads that failed every attempt, waiting for the next retry round.
    pub(crate) waiting_retry: usize,
    /// What the fleet's last bucket GC pass counted, when this berth knows it.
    pub(crate) counted: Option<Counted>,
}

/// Objects and bytes in the bucket, as a GC pass counted them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Counted {
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
    /// Seconds since the epoch.
    pub(crate) at: u64,
}

/// What a bucket answered for a content read.
pub(crate) enum Found {
    Object(Box<GetResult>),
    /// Not there, or uploaded under another registry.
    Missing,
    /// The bucket failed or is in backoff: the fill goes on without it.
    Skipped,
}

impl Bucket {
    /// `reads` and `writes` are clients of one bucket (`source::bucket::connect`).
    pub(crate) fn new(
        (store, writes): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>),
        cfg: &config::Bucket,
        identity: &str,
    ) -> Bucket {
        let root = Path::from(cfg.prefix.as_str()).join("v1");
        Bucket {
            store,
            root: root.clone(),
            writes,
            blobs: root.clone().join("blobs").join("sha256"),
            manifests: root.clone().join("manifests").join("sha256"),
            tags: root.clone().join("tags"),
            fills: root.join("fills"),
            identity: identity.to_owned(),
            lease_key: None,
            fill_lease: cfg.fill_lease,
            url: cfg.url.to_string(),
            timeout: cfg.timeout,
            uploads: cfg.upload == config::Upload::Background,
            health: Health::default(),
            turns: Arc::new(tokio::sync::Semaphore::new(UPLOADS_AT_ONCE)),
            suspect: Mutex::default(),
            later: Mutex::default(),
            queued: AtomicUsize::new(0),
            reads: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
            // Shorter than an hour, the bucket GC's period: another berth's pass may evict.
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            marked: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            inventory: Mutex::new(None),
            marking: Arc::new(tokio::sync::Semaphore::new(8)),
            round: Default::default(),
        }
    }

    /// Signs this berth's fill leases with `key` (the peer token), and lets it stream from a
    /// holder whose lease verifies under it.
    pub(crate) fn with_lease_key(mut self, key: crate::config::Secret) -> Bucket {
        self.lease_key = Some(key);
        self
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> Path {
        self.blobs.clone().join(digest.hex())
    }

    pub(crate) fn manifest_path(&self, digest: &Digest) -> Path {
        self.manifests.clone().join(digest.hex())
    }

    /// Whether the bucket may be asked now (not in a backoff after a failure).
    pub(crate) fn up(&self) -> bool {
        self.health.up()
    }

    /// What the cache API and the metrics show of the bucket.
    pub(crate) fn status(&self) -> Status {
        Status {
            url: self.url.clone(),
            up: self.up(),
            uploads: self.uploads,
            waiting_retry: self.later.lock().expect("later lock").len(),
            counted: self.inventory.lock().expect("inventory lock").map(|(objects, bytes, at)| Counted {
                objects,
                bytes,
                at,
            }),
        }
    }

    /// Opens `path` for `origin`, within the timeout.
    pub(crate) async fn open(&self, path: &Path, origin: &str) -> Found {
        if !self.health.up() {
            return Found::Skipped;
        }
        let got = tokio::time::timeout(self.timeout, self.store.get_opts(path, GetOptions::default())).await;
        match got {
            Ok(Ok(got)) if labelled_for(&got.attributes, origin) => {
                count("get", "hit");
                self.health.ok();
                Found::Object(Box::new(got))
            }
            Ok(Ok(_)) => {
                count("get", "other-registry");
                self.health.ok();
                Found::Missing
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                count("get", "miss");
                self.health.ok();
                Found::Missing
            }
            Ok(Err(e)) => {
                self.failed("get", &e.to_string());
                Found::Skipped
            }
            Err(_) => {
                self.failed("get", &format!("no answer within {:?}", self.timeout));
                Found::Skipped
            }
        }
    }

    /// The part checksums a blob object carries, when they describe it (see `parts`).
    pub(crate) fn parts_of(&self, got: &GetResult) -> Option<parts::Parts> {
        let value = got.attributes.get(&Attribute::Metadata(parts::KEY.into()))?;
        parts::Parts::parse(value.as_ref(), got.meta.size)
    }

    /// The blob object at `path` as a fill's source: its length from the bucket, hashed by
    /// the fill, held to a floor of 1 MiB/s over each `timeout`. A cut body is resumed from the
    /// bucket with Range, only from the same object (`If-Match` on its ETag; without an ETag it
    /// is not resumed, and the fill moves on to its own source).
    pub(crate) fn source(&self, got: GetResult, path: &Path) -> Source {
        let len = got.meta.size;
        let resume = got.meta.e_tag.clone().map(|e_tag| self.resume_at(path, e_tag));
        let floor = MinRate { bytes_per_sec: FLOOR, window: self.timeout };
        Source { len: Some(len), body: body_of(got), resume, rejected: None, hold: None, floor: Some(floor) }
    }

    /// Asks for the object at `path`, as long as its ETag is `e_tag`, from an offset.
    fn resume_at(&self, path: &Path, e_tag: String) -> Resume {
        let (store, path, timeout) = (self.store.clone(), path.clone(), self.timeout);
        Box::new(move |from| {
            let (store, path, e_tag) = (store.clone(), path.clone(), e_tag.clone());
            async move {
                let opts = GetOptions {
                    if_match: Some(e_tag),
                    range: Some(GetRange::Offset(from)),
                    ..GetOptions::default()
                };
                let got = match tokio::time::timeout(timeout, store.get_opts(&path, opts)).await {
                    Ok(Ok(got)) if got.range.start == from => got,
                    Ok(Ok(got)) => {
                        return Err(Error::Unavailable(format!(
                            "bucket resumed at {} for {from}",
                            got.range.start
                        )));
                    }
                    Ok(Err(e)) => return Err(Error::Unavailable(format!("bucket resume at {from}: {e}"))),
                    Err(_) => {
                        return Err(Error::Unavailable(format!(
                            "bucket resume: no answer within {timeout:?}"
                        )))
                    }
                };
                count("get", "resumed");
                Ok(Resumed { body: body_of(got), skip: 0 })
            }
            .boxed()
        })
    }

    /// An object found wrong: counted, deleted (best effort), and uploaded again from the
    /// verified copy without asking whether one is there.
    pub(crate) async fn rejected(&self, digest: &Digest, path: &Path, why: &str) {
        metrics::counter!("berth_bucket_corrupt_total").increment(1);
        tracing::warn!(%digest, object = %path, why, "bucket object rejected: deleted; a verified copy replaces it");
        self.suspect.lock().expect("suspect lock").insert(digest.clone());
        self.known.invalidate(digest);
        let path = path.clone();
        let deleted = self.store.delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        let _ = tokio::time::timeout(self.timeout, deleted.collect::<Vec<_>>()).await;
    }

    /// Whether this berth knows `digest` to be in the bucket.
    pub(crate) fn knows(&self, digest: &Digest) -> bool {
        self.known.contains_key(digest)
    }

    /// Notes that `digest` is in the bucket.
    pub(crate) fn known_in_bucket(&self, digest: &Digest) {
        self.known.insert(digest.clone(), ());
    }

    /// A turn among the fills reading from the bucket at once.
    pub(crate) async fn read_turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.reads.clone().acquire_owned().await.ok()
    }

    /// The longest a read of `len` bytes may take in all: `timeout`, plus the length at 16 MiB/s.
    pub(crate) fn read_budget(&self, len: u64) -> Duration {
        self.timeout + Duration::from_secs(len / READ_RATE)
    }

    /// Counts a failed use of the bucket and starts its backoff.
    pub(crate) fn failed(&self, op: &'static str, why: &str) {
        count(op, "error");
        let backoff = self.health.failed();
        tracing::warn!(bucket = %self.url, op, error = why, ?backoff, "bucket unavailable: skipped for now");
    }
}

/// An object's body, its bytes counted as read from the bucket.
fn body_of(got: GetResult) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>> {
    got.into_stream()
        .map(|chunk| {
            let chunk = chunk.map_err(|e| Error::Unavailable(format!("bucket body: {e}")))?;
            metrics::counter!("berth_bucket_bytes_total", "direction" => "read")
                .increment(chunk.len() as u64);
            Ok(chunk)
        })
        .boxed()
}

/// The registry an object was uploaded under.
fn registries_of(attributes: &Attributes) -> impl Iterator<Item = &str> {
    let label = attributes.get(&Attribute::Metadata("registry".into())).map_or("", |v| v.as_ref());
    label.split(',').filter(|r| !r.is_empty())
}

/// Whether an object was uploaded under `origin` (one of the registries in its label).
pub(super) fn labelled_for(attributes: &Attributes, origin: &str) -> bool {
    registries_of(attributes).any(|r| r == origin)
}

/// The label for an object uploaded under `origin` where one labelled `before` was: `origin`
/// first, then the earlier registries, within 1 KiB (S3 keeps 2 KiB of metadata).
pub(super) fn label_with(before: Option<&Attributes>, origin: &str) -> String {
    let mut label = origin.to_owned();
    for r in before.into_iter().flat_map(registries_of).filter(|r| *r != origin) {
        if label.len() + 1 + r.len() > 1024 {
            break;
        }
        label.push(',');
        label.push_str(r);
    }
    label
}

/// What came of one of berth's uses of the bucket (a read for a fill, an upload, a lease, a
/// tag); the requests themselves are counted by the client (`berth_bucket_requests_total`).
pub(super) fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("berth_bucket_outcomes_total", "op" => op, "outcome" => outcome).increment(1);
}

/// Consecutive failures, and until when the bucket is left alone.
#[derive(Default)]
struct Health {
    failures: AtomicU32,
    until: Mutex<Option<Instant>>,
}

impl Health {
    fn up(&self) -> bool {
        self.until.lock().expect("health lock").is_none_or(|t| Instant::now() >= t)
    }

    fn ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.until.lock().expect("health lock") = None;
    }

    /// Counts a failure and returns the backoff it starts: 1 s, doubling, at most 60 s.
    fn failed(&self) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        let backoff = Duration::from_secs(1 << n).min(Duration::from_secs(60));
        *self.until.lock().expect("health lock") = Some(Instant::now() + backoff);
        backoff
    }
}

#[cfg(test)]
mod tests;
