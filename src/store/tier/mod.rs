//! The tier contract: a store of verified, content-addressed objects. Memory and disk
//! implement it, and `Tiered` composes them (memory in front of what is below it).
//!
//! What every tier holds to (checked by `conformance` against each one):
//! - an object is visible to `len`, `read` and `scan` only once its write is committed, and
//!   a write commits only with a `Verified` proof for its digest and the length written;
//! - a write dropped before it commits leaves nothing: no object, no staged bytes, the same
//!   usage;
//! - while a write is in flight, its view shows a growing written length and the bytes
//!   written so far;
//! - a range is `start..end` with `start < end <= len`; anything else is refused;
//! - bytes already read stay valid after the object is removed;
//! - `usage` counts committed objects and their bytes, once per digest.

mod bucket;
mod checks;
pub(crate) mod disk;
pub(crate) mod memory;
mod tiered;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::io;
use std::ops::Range;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::error::Error;
use crate::oci::digest::Digest;

pub(crate) use tiered::Tiered;

// Parts of the contract the store does not call yet (ranges, scans, usage, async writes) are
// held by every tier all the same and checked by `conformance`: hence the `dead_code` allowances.

/// Bytes and objects a tier holds.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    pub(crate) bytes: u64,
    pub(crate) objects: u64,
}

/// Proof that content of `len` bytes hashes to `digest`: what a write needs to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    digest: Digest,
    len: u64,
}

impl Verified {
    /// Compares a finished SHA-256 of `len` bytes with `digest`.
    pub(crate) fn check(digest: &Digest, hash: [u8; 32], len: u64) -> Result<Verified, Error> {
        let actual = Digest::from_hash(hash);
        if actual != *digest {
            return Err(Error::Integrity(format!("{digest}: content hashes to {actual}")));
        }
        Ok(Verified { digest: digest.clone(), len })
    }

    /// Hashes whole content and compares it with `digest`.
    pub(crate) fn of(digest: &Digest, bytes: &[u8]) -> Result<Verified, Error> {
        Verified::check(digest, Sha256::digest(bytes).into(), bytes.len() as u64)
    }

    /// The length verified.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Refuses a commit of `written` bytes for `digest` that this proof is not for.
    fn admit(&self, digest: &Digest, written: u64) -> io::Result<()> {
        if self.digest != *digest || self.len != written {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{digest}: {written} bytes written, verified {} of {}", self.len, self.digest),
            ));
        }
        Ok(())
    }
}

/// A store of verified objects, addressed by digest.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait BlobTier: Send + Sync + 'static {
    type Writer: TierWriter;

    /// Whether objects outlive the process (and may have been damaged meanwhile): `Tiered`
    /// hashes each one on its first hit.
    const DURABLE: bool;

    /// The length of the object for `digest`, if held.
    fn len(&self, digest: &Digest) -> impl Future<Output = io::Result<Option<u64>>> + Send;

    /// The whole object for `digest`, if held.
    fn read(&self, digest: &Digest) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;

    /// Bytes `range` of the object for `digest`, if held; an empty range, or one past the
    /// end, is refused.
    fn read_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> impl Future<Output = io::Result<Option<Bytes>>> + Send {
        async move {
            match self.read(digest).await? {
                Some(bytes) => slice(&bytes, range).map(Some),
                None => Ok(None),
            }
        }
    }

    /// Starts writing the object for `digest` (`len` when announced). Nothing is visible
    /// until the writer commits; a writer dropped before that leaves nothing.
    fn begin_write(
        &self,
        digest: &Digest,
        len: Option<u64>,
    ) -> impl Future<Output = io::Result<Self::Writer>> + Send;

    /// Removes the object for `digest`; returns the bytes freed (0 when it was not held).
    fn remove(&self, digest: &Digest) -> impl Future<Output = io::Result<u64>> + Send;

    /// Every object held, with its length.
    fn scan(&self) -> impl Future<Output = io::Result<Vec<(Digest, u64)>>> + Send;

    /// Bytes and objects held now.
    fn usage(&self) -> impl Future<Output = Usage> + Send;

    /// Whether an object of `len` bytes is taken at all.
    fn admits(&self, len: u64) -> bool;
}

/// A write in flight. Dropping it before `commit` aborts it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait TierWriter: Send + 'static {
    type View: WrittenView;

    /// Appends `bytes` after what is written; the view shows them once this returns.
    fn append(&mut self, bytes: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// What followers of the write read: its written length and bytes.
    fn view(&self) -> Self::View;

    /// Publishes the object; refused (and nothing published) unless `proof` is for this
    /// digest and the length written.
    fn commit(self, proof: Verified) -> impl Future<Output = io::Result<()>> + Send;
}

/// The written part of a write in flight, for its followers.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait WrittenView: Clone + Send + Sync + 'static {
    /// The written length, changing as bytes are appended.
    fn written(&self) -> watch::Receiver<u64>;

    /// Bytes `range` of what is written; refused when empty or past the written length.
    fn read_written(&self, range: Range<u64>) -> impl Future<Output = io::Result<Bytes>> + Send;
}

/// `range` of `bytes`, refused when empty or past the end.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn slice(bytes: &Bytes, range: Range<u64>) -> io::Result<Bytes> {
    check_range(&range, bytes.len() as u64)?;
    Ok(bytes.slice(range.start as usize..range.end as usize))
}

/// Refuses a range that is empty or ends past `len`.
pub(crate) fn check_range(range: &Range<u64>, len: u64) -> io::Result<()> {
    if range.start >= range.end || range.end > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {}..{} of {len} bytes", range.start, range.end),
        ));
    }
    Ok(())
}
