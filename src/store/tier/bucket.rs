//! The bucket tier as a `BlobTier`: objects in an S3-compatible object store, through
//! `object_store`, at `<prefix>/v1/blobs/sha256/<hex>`. A write stages its parts in memory,
//! where followers read them, and puts the object whole on commit: nothing is visible in the
//! bucket before the proof. Not wired into the store yet (see ARCHITECTURE "The store's
//! tiers"); the conformance suite holds it to the contract against `object_store`'s
//! in-memory store.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};

use super::memory::{too_large, MemoryView, Staged};
use super::{check_range, BlobTier, TierWriter, Usage, Verified};
use crate::oci::digest::Digest;

/// A bucket (or a prefix in one) holding verified blobs.
#[derive(Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct BucketTier {
    store: Arc<dyn ObjectStore>,
    blobs: Path,
    /// The largest object taken.
    max_object: u64,
}

#[cfg_attr(not(test), allow(dead_code))]
impl BucketTier {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: &str, max_object: u64) -> BucketTier {
        let blobs = Path::from(prefix).join("v1").join("blobs").join("sha256");
        BucketTier { store, blobs, max_object }
    }

    fn path(&self, digest: &Digest) -> Path {
        self.blobs.clone().join(digest.hex())
    }

    /// The object's length; None when it is not there.
    async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let head = GetOptions { head: true, ..GetOptions::default() };
        match self.store.get_opts(&self.path(digest), head).await {
            Ok(got) => Ok(Some(got.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

impl BlobTier for BucketTier {
    type Writer = BucketWriter;
    const DURABLE: bool = true;

    async fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        self.size(digest).await
    }

    async fn read(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        match self.store.get_opts(&self.path(digest), GetOptions::default()).await {
            Ok(got) => got.bytes().await.map(Some).map_err(io::Error::other),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    async fn read_range(&self, digest: &Digest, range: Range<u64>) -> io::Result<Option<Bytes>> {
        let Some(len) = self.size(digest).await? else { return Ok(None) };
        check_range(&range, len)?;
        let got = self.store.get_ranges(&self.path(digest), std::slice::from_ref(&range)).await;
        let mut parts = got.map_err(io::Error::other)?;
        Ok(parts.pop())
    }

    async fn begin_write(&self, digest: &Digest, len: Option<u64>) -> io::Result<BucketWriter> {
        if let Some(len) = len.filter(|&l| l > self.max_object) {
            return Err(too_large(len, "bucket"));
        }
        Ok(BucketWriter { tier: self.clone(), digest: digest.clone(), staged: Staged::new(len) })
    }

    async fn remove(&self, digest: &Digest) -> io::Result<u64> {
        let Some(size) = self.size(digest).await? else { return Ok(0) };
        let path = self.path(digest);
        let mut deleted = self.store.delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(size)
    }

    async fn scan(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut listed = self.store.list(Some(&self.blobs));
        let mut out = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(io::Error::other)?;
            // Only names that are digests count: anything else in the prefix is not berth's.
            let name = meta.location.filename().unwrap_or_default();
            if let Ok(digest) = Digest::parse(&format!("sha256:{name}")) {
                out.push((digest, meta.size));
            }
        }
        Ok(out)
    }

    async fn usage(&self) -> Usage {
        let listed = self.scan().await.unwrap_or_default();
        Usage { bytes: listed.iter().map(|(_, n)| n).sum(), objects: listed.len() as u64 }
    }

    fn admits(&self, len: u64) -> bool {
        len <= self.max_object
    }
}

/// A write to the bucket: its parts staged in memory, put whole on commit.
pub(crate) struct BucketWriter {
    tier: BucketTier,
    digest: Digest,
    staged: Staged,
}

impl TierWriter for BucketWriter {
    type View = MemoryView;

    async fn append(&mut self, bytes: Bytes) -> io::Result<()> {
        self.staged.append(bytes, |n| self.tier.admits(n), "bucket")
    }

    fn view(&self) -> MemoryView {
        self.staged.view()
    }

    async fn commit(self, proof: Verified) -> io::Result<()> {
        proof.admit(&self.digest, self.staged.written())?;
        let path = self.tier.path(&self.digest);
        let put = self
            .tier
            .store
            .put_opts(&path, PutPayload::from(self.staged.whole()), PutOptions::default())
            .await;
        put.map(drop).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_in_the_prefix_that_are_not_digests_are_not_objects() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let tier = BucketTier::new(store.clone(), "p", 1 << 20);
        let blobs = Path::from("p/v1/blobs/sha256");
        for name in ["not-a-digest", "ABCDEF", &"0".repeat(63)] {
            store
                .put_opts(&blobs.clone().join(name), PutPayload::from_static(b"x"), PutOptions::default())
                .await
                .unwrap();
        }
        assert!(tier.scan().await.unwrap().is_empty());
        assert_eq!(tier.usage().await, Usage::default());
        // A digest's own object is one; a range past its end is refused.
        let d = Digest::of(b"hello");
        store
            .put_opts(&tier.path(&d), PutPayload::from_static(b"hello"), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(tier.scan().await.unwrap(), vec![(d.clone(), 5)]);
        assert!(tier.read_range(&d, 3..6).await.is_err());
        assert_eq!(tier.read_range(&d, 3..5).await.unwrap().unwrap(), Bytes::from_static(b"lo"));
        assert!(tier.begin_write(&d, Some(2 << 20)).await.is_err(), "an object past max_object was begun");
    }
}
