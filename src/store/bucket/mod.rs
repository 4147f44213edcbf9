//! The bucket below the disk tier, as the store uses it (`[bucket]`): the source a fill asks
//! before its own, uploads of verified content after it is published, and the health that
//! leaves a failing bucket alone for a while.
//!
//! - A fill's bytes from the bucket are hashed as they arrive and shown to nobody before they
//!   verify (see `fill::lead`); an object that does not match its digest is deleted, counted,
//!   and fetched from the fill's own source, whose verified copy replaces it.
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

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, GetResult, ObjectStore};

use crate::config::{self, MinRate};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::fill::Source;

pub(crate) mod lease;
mod tags;
mod upload;

pub(crate) use lease::{Claimed, Seen};
pub(crate) use upload::Kind;

/// Uploads at once.
const UPLOADS_AT_ONCE: usize = 4;
/// Fills reading from the bucket at once; more wait for a turn.
const READS_AT_ONCE: usize = 16;
/// The slowest a whole bucket read may go: past `timeout` plus its length at this rate, the
/// fill moves on to its source.
const READ_RATE: u64 = 16 * 1024 * 1024;
/// A manifest object larger than this is not read (manifests are at most 4 MiB).
const MANIFEST_MAX: u64 = 4 * 1024 * 1024;
/// The slowest a body from the bucket may arrive, over each `timeout`.
const FLOOR: u64 = 1024 * 1024;

pub(crate) struct Bucket {
    /// Reads, leases and tags: every request bounded by `timeout`.
    store: Arc<dyn ObjectStore>,
    /// Uploads: no read timeout (sending a part takes as long as it takes), each put bounded
    /// by `timeout` plus its length at 1 MiB/s.
    writes: Arc<dyn ObjectStore>,
    blobs: Path,
    manifests: Path,
    tags: Path,
    fills: Path,
    /// Who this berth is in a lease (its peer URL, or its host name and listen address).
    identity: String,
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
            writes,
            blobs: root.clone().join("blobs").join("sha256"),
            manifests: root.clone().join("manifests").join("sha256"),
            tags: root.clone().join("tags"),
            fills: root.join("fills"),
            identity: identity.to_owned(),
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
            round: Default::default(),
        }
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

    /// The blob object as a fill's source: its length from the bucket, hashed by the fill,
    /// held to a floor of 1 MiB/s over each `timeout`, and never resumed (a cut moves the fill
    /// on to its own source).
    pub(crate) fn source(&self, got: GetResult) -> Source {
        let len = got.meta.size;
        let body = got
            .into_stream()
            .map(|chunk| {
                let chunk = chunk.map_err(|e| Error::Unavailable(format!("bucket body: {e}")))?;
                metrics::counter!("berth_bucket_bytes_total", "direction" => "read")
                    .increment(chunk.len() as u64);
                Ok(chunk)
            })
            .boxed();
        let floor = MinRate { bytes_per_sec: FLOOR, window: self.timeout };
        Source { len: Some(len), body, resume: None, rejected: None, hold: None, floor: Some(floor) }
    }

    /// A verified manifest and its media type from the bucket, for `origin`; None when it is
    /// not there, not whole, or the bucket is skipped. A wrong one is deleted.
    pub(crate) async fn manifest(&self, digest: &Digest, origin: &str) -> Option<(Bytes, String)> {
        let Found::Object(got) = self.open(&self.manifest_path(digest), origin).await else { return None };
        if got.meta.size > MANIFEST_MAX {
            self.rejected(digest, &self.manifest_path(digest), "larger than a manifest").await;
            return None;
        }
        let Some(media_type) = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .filter(|t| is_manifest_type(t))
        else {
            self.rejected(digest, &self.manifest_path(digest), "no manifest media type").await;
            return None;
        };
        let bytes = match tokio::time::timeout(self.timeout, read_bounded(*got, MANIFEST_MAX)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                self.failed("get", &e);
                return None;
            }
            Err(_) => {
                self.failed("get", "manifest body stalled");
                return None;
            }
        };
        if Digest::of(&bytes) != *digest {
            self.rejected(digest, &self.manifest_path(digest), "does not match its digest").await;
            return None;
        }
        if !names_its_type(&bytes, &media_type) {
            self.rejected(digest, &self.manifest_path(digest), "its bytes name another media type").await;
            return None;
        }
        Some((bytes, media_type))
    }

    /// An object found wrong: counted, deleted (best effort), and uploaded again from the
    /// verified copy without asking whether one is there.
    pub(crate) async fn rejected(&self, digest: &Digest, path: &Path, why: &str) {
        metrics::counter!("berth_bucket_corrupt_total").increment(1);
        tracing::warn!(%digest, object = %path, why, "bucket object rejected: deleted, and replaced from the source");
        self.suspect.lock().expect("suspect lock").insert(digest.clone());
        let path = path.clone();
        let deleted = self.store.delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        let _ = tokio::time::timeout(self.timeout, deleted.collect::<Vec<_>>()).await;
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

/// A media type as manifests carry it (`application/vnd.oci.image.index.v1+json`): what a
/// bucket object's Content-Type must be to be served as one.
pub(super) fn is_media_type(t: &str) -> bool {
    let (kind, sub) = t.split_once('/').unwrap_or_default();
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    t.len() <= 255 && token(kind) && token(sub)
}

/// A manifest media type berth serves (an image manifest or an index, OCI or Docker).
pub(super) fn is_manifest_type(t: &str) -> bool {
    is_media_type(t) && crate::oci::accept::AcceptClass::all().names(t)
}

/// Whether a manifest's own `mediaType`, when it names one, is `media_type`.
fn names_its_type(bytes: &[u8], media_type: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    match serde_json::from_slice::<Named>(bytes) {
        Ok(Named { media_type: Some(named) }) => named == media_type,
        Ok(Named { media_type: None }) => true,
        Err(_) => false,
    }
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

/// Reads a whole body, refusing one past `max` bytes whatever its header said.
async fn read_bounded(got: GetResult, max: u64) -> Result<Bytes, String> {
    let mut body = got.into_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(format!("object longer than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
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
