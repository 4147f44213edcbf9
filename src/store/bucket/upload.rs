//! Uploads: verified content put in the bucket after it is published locally, at most four
//! at once, retried with backoff, and once more every five minutes after that while it is
//! still held. A failed upload never fails a pull: it is logged and counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, PutOptions, PutPayload};

use super::parts::{self, Parts};
use super::{count, label_with, labelled_for, Bucket};
use crate::oci::digest::Digest;
use crate::store::fill::LeaseHeld;
use crate::store::Store;

/// Objects up to this size are put in one request; larger ones in parts of this size.
pub(crate) const PART: usize = 16 * 1024 * 1024;
/// Parts of one object in flight at once.
const PARTS_AT_ONCE: usize = 4;
/// Attempts of one upload before it waits for the next retry round.
const ATTEMPTS: u32 = 3;
/// How often uploads that failed every attempt are tried again, how many are remembered, and
/// after how many rounds one is given up (an hour).
const RETRY_ROUND: Duration = Duration::from_secs(300);
const RETRY_MAX: usize = 10_000;
const RETRY_ROUNDS: u32 = 12;
/// Uploads waiting for a turn at most; more go straight to the next retry round.
const QUEUE_MAX: usize = 1024;

/// What an upload puts: a blob, or a manifest with its media type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Blob { origin: String },
    Manifest { origin: String, media_type: Option<String> },
}

impl Store {
    /// Uploads the published blob `digest` (fetched for `origin`) in the background.
    /// A fleet lease the fill won is released once the upload has ended.
    pub(crate) fn upload_blob(self: &Arc<Self>, digest: &Digest, origin: &str, lease: Option<LeaseHeld>) {
        self.upload_later(digest, Kind::Blob { origin: origin.to_owned() }, lease);
    }

    /// A blob streamed from the holder of its fleet lease, which uploads it: looked for at the
    /// next retry round (a HEAD), and uploaded only if the holder's upload never landed.
    pub(crate) fn upload_blob_if_missed(self: &Arc<Self>, digest: &Digest, origin: &str) {
        let Some(bucket) = self.bucket.clone().filter(|b| b.uploads) else { return };
        bucket.retry_later(self, digest.clone(), Kind::Blob { origin: origin.to_owned() });
    }

    /// Uploads the verified manifest `digest` (fetched for `origin`) in the background.
    pub(crate) fn upload_manifest(self: &Arc<Self>, digest: &Digest, origin: &str, media_type: Option<&str>) {
        let kind = Kind::Manifest { origin: origin.to_owned(), media_type: media_type.map(str::to_owned) };
        self.upload_later(digest, kind, None);
    }

    /// Whether verified content goes to the bucket (`[bucket]` with `upload = "background"`).
    pub(crate) fn uploads_to_bucket(&self) -> bool {
        self.bucket.as_ref().is_some_and(|b| b.uploads)
    }

    /// Uploads the blob `digest` (held here, fetched for `origin`) now, for preheat's bucket
    /// tier; true once it is in the bucket.
    pub(crate) async fn upload_blob_now(&self, digest: &Digest, origin: &str) -> bool {
        self.upload_known(digest, Kind::Blob { origin: origin.to_owned() }).await
    }

    /// Uploads the manifest `digest` (held here, fetched for `origin`) now, with the media
    /// type it was stored with, for preheat's bucket tier; true once it is in the bucket.
    pub(crate) async fn upload_manifest_now(&self, digest: &Digest, origin: &str) -> bool {
        let media_type = self.meta.blob(digest).ok().flatten().and_then(|b| b.media_type);
        self.upload_known(digest, Kind::Manifest { origin: origin.to_owned(), media_type }).await
    }

    /// Uploads `digest` now unless this berth knows it is in the bucket; true once it is.
    async fn upload_known(&self, digest: &Digest, kind: Kind) -> bool {
        let Some(bucket) = self.bucket.as_ref().filter(|b| b.uploads) else { return false };
        bucket.knows(digest) || (self.upload_now(bucket, digest, &kind).await && bucket.knows(digest))
    }

    fn upload_later(self: &Arc<Self>, digest: &Digest, kind: Kind, lease: Option<LeaseHeld>) {
        let Some(bucket) = self.bucket.clone().filter(|b| b.uploads) else { return };
        let (store, digest) = (self.clone(), digest.clone());
        if bucket.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE_MAX {
            bucket.queued.fetch_sub(1, Ordering::AcqRel);
            bucket.retry_later(&store, digest, kind);
            return;
        }
        tokio::spawn(async move {
            let stored = store.upload_now(&bucket, &digest, &kind).await;
            bucket.queued.fetch_sub(1, Ordering::AcqRel);
            drop(lease);
            if !stored {
                bucket.retry_later(&store, digest, kind);
            }
        });
    }

    /// Uploads what the store holds of `digest` now, in one of the bucket's upload turns
    /// (taken before the bytes are mapped); true when it is in the bucket (or no longer held,
    /// so there is nothing to upload).
    async fn upload_now(&self, bucket: &Bucket, digest: &Digest, kind: &Kind) -> bool {
        let Ok(_turn) = bucket.turns.acquire().await else { return false };
        let Some(bytes) = self.verified_bytes(digest).await else { return true };
        bucket.upload(digest, kind, bytes).await
    }

    /// The verified bytes of `digest`: from memory, else the disk file once it is known to
    /// match (its first-hit check, free when its publish checked it).
    async fn verified_bytes(&self, digest: &Digest) -> Option<Bytes> {
        if let Some(bytes) = self.memory.get(digest).await {
            return Some(bytes);
        }
        let before = self.tiers.seen(digest);
        let (disk, d) = (self.disk.clone(), digest.clone());
        let mapped = tokio::task::spawn_blocking(move || {
            let (file, len) = disk.get(&d).ok()??;
            crate::store::disk::map(&file, len).ok()
        });
        let map = mapped.await.ok()??;
        let after = self.tiers.seen(digest);
        self.tiers.ensure_checked(digest, &map, before, after).await.then_some(map)
    }
}

impl Bucket {
    /// Remembers an upload that failed every attempt, and schedules a retry round.
    fn retry_later(self: &Arc<Self>, store: &Arc<Store>, digest: Digest, kind: Kind) {
        let mut later = self.later.lock().expect("later lock");
        let rounds = later.get(&(digest.clone(), kind.clone())).copied().unwrap_or(0);
        if rounds >= RETRY_ROUNDS {
            count("upload", "given-up");
            tracing::warn!(%digest, rounds, "bucket upload given up");
        } else if later.len() < RETRY_MAX {
            later.insert((digest, kind), rounds + 1);
        }
        drop(later);
        if self.round.swap(true, Ordering::AcqRel) {
            return;
        }
        let (bucket, store) = (self.clone(), Arc::downgrade(store));
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_ROUND).await;
            bucket.round.store(false, Ordering::Release);
            let Some(store) = store.upgrade() else { return };
            let due: Vec<_> = bucket.later.lock().expect("later lock").keys().cloned().collect();
            for (digest, kind) in due {
                if store.upload_now(&bucket, &digest, &kind).await {
                    bucket.later.lock().expect("later lock").remove(&(digest, kind));
                } else {
                    bucket.retry_later(&store, digest, kind);
                }
            }
        });
    }

    /// Puts `bytes` of `digest` where `kind` goes, under its origin (one request, or parts;
    /// a blob with its part checksums), unless an object of that length, labelled for the
    /// origin (and, for a blob, with checksums), is there already. Retried with backoff;
    /// false when every attempt failed.
    pub(crate) async fn upload(&self, digest: &Digest, kind: &Kind, bytes: Bytes) -> bool {
        let (path, origin, media_type, blob) = match kind {
            Kind::Blob { origin } => (self.blob_path(digest), origin, None, true),
            Kind::Manifest { origin, media_type } => {
                (self.manifest_path(digest), origin, media_type.as_deref(), false)
            }
        };
        let path = &path;
        let suspect = self.suspect.lock().expect("suspect lock").remove(digest);
        let present = if suspect { None } else { self.present(path, bytes.len() as u64).await };
        // A blob object without part checksums (an older upload) is put again with them.
        let complete = |a: &Attributes| !blob || a.get(&Attribute::Metadata(parts::KEY.into())).is_some();
        if present.as_ref().is_some_and(|a| labelled_for(a, origin) && complete(a)) {
            count("upload", "present");
            self.known_in_bucket(digest);
            return true;
        }
        let mut attributes = Attributes::new();
        let label = label_with(present.as_ref(), origin);
        attributes.insert(Attribute::Metadata("registry".into()), label.into());
        if let Some(t) = media_type {
            attributes.insert(Attribute::ContentType, t.to_owned().into());
        }
        if blob {
            let b = bytes.clone();
            let Ok(parts) = tokio::task::spawn_blocking(move || Parts::of(&b)).await else { return false };
            attributes.insert(Attribute::Metadata(parts::KEY.into()), parts.label().into());
        }
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1) * 4u32.pow(attempt - 1)).await;
            }
            match self.put(path, bytes.clone(), attributes.clone()).await {
                Ok(()) => {
                    metrics::counter!("berth_bucket_bytes_total", "direction" => "written")
                        .increment(bytes.len() as u64);
                    count("upload", "stored");
                    self.health.ok();
                    self.known_in_bucket(digest);
                    return true;
                }
                Err(e) => {
                    count("upload", "error");
                    tracing::warn!(%digest, attempt = attempt + 1, error = %e, "bucket upload failed");
                }
            }
        }
        false
    }

    /// The attributes of the object of `len` bytes at `path` (one HEAD); None when there is
    /// none of that length, or when unsure.
    async fn present(&self, path: &Path, len: u64) -> Option<Attributes> {
        let head = GetOptions { head: true, ..GetOptions::default() };
        match tokio::time::timeout(self.timeout, self.store.get_opts(path, head)).await {
            Ok(Ok(got)) if got.meta.size == len => Some(got.attributes),
            _ => None,
        }
    }

    /// One put, or a multipart upload of `PART`s (aborted when a part fails); each request
    /// bounded by `timeout` plus its length at 1 MiB/s.
    async fn put(&self, path: &Path, bytes: Bytes, attributes: Attributes) -> object_store::Result<()> {
        let opts = PutOptions { attributes: attributes.clone(), ..PutOptions::default() };
        if bytes.len() <= PART {
            let put = self.writes.put_opts(path, PutPayload::from(bytes.clone()), opts);
            return self.bounded(bytes.len(), put).await.map(drop);
        }
        let multipart = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let mut upload = self.bounded(0, self.writes.put_multipart_opts(path, multipart)).await?;
        let parts: Vec<_> = (0..bytes.len())
            .step_by(PART)
            .map(|at| {
                let part = bytes.slice(at..(at + PART).min(bytes.len()));
                let n = part.len();
                self.bounded(n, upload.put_part(PutPayload::from(part)))
            })
            .collect();
        let sent: Vec<_> = futures::stream::iter(parts).buffer_unordered(PARTS_AT_ONCE).collect().await;
        if let Some(Err(e)) = sent.into_iter().find(Result::is_err) {
            let _ = upload.abort().await;
            return Err(e);
        }
        self.bounded(0, upload.complete()).await.map(drop)
    }

    /// `request`, sending `len` bytes, within `timeout` plus `len` at 1 MiB/s.
    async fn bounded<T>(
        &self,
        len: usize,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        let budget = self.timeout + Duration::from_secs(len as u64 >> 20);
        tokio::time::timeout(budget, request).await.unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "bucket",
                source: format!("no answer within {budget:?}").into(),
            })
        })
    }
}
