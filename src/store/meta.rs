//! Metadata that must survive restarts: per-digest size, manifest media type and last access;
//! tag mappings. Kept in redb, an embedded, pure-Rust, crash-safe (copy-on-write B-tree with
//! checksummed commits) key-value store: no C library, no server, one file.
//!
//! Blocking: call from blocking threads. Accesses are batched in memory and flushed
//! periodically so that a hit costs no database write.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::oci::digest::Digest;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const BLOBS: Table = TableDefinition::new("blobs");
const TAGS: Table = TableDefinition::new("tags");
const PINS: Table = TableDefinition::new("pins");
/// `<digest> <registry>` → empty: the registries that served or confirmed a digest.
const SERVED: Table = TableDefinition::new("served");
/// `<registry>/<repository>@<subject>?<query>` → the last referrers answer upstream gave.
const REFERRERS: Table = TableDefinition::new("referrers");

/// Referrers answers kept at most; past it, the least recently confirmed tenth is dropped.
pub(crate) const MAX_REFERRERS: usize = 10_000;

/// An image a user asked to keep: recorded now, honoured by GC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pin {
    pub(crate) digest: String,
    pub(crate) pinned_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlobMeta {
    pub(crate) size: u64,
    /// Set for content fetched as a manifest: the exact `Content-Type` to answer with.
    pub(crate) media_type: Option<String>,
    /// Seconds since the epoch.
    pub(crate) last_access: u64,
}

/// A referrers answer as upstream last gave it: its body is the image index `index`, kept in
/// the tiers like any manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReferrersEntry {
    /// The manifest the referrers point to.
    pub(crate) subject: String,
    pub(crate) index: String,
    pub(crate) media_type: String,
    /// Upstream's `OCI-Filters-Applied`, when it filtered.
    pub(crate) filters_applied: Option<String>,
    /// Upstream's next-page `Link`, and the URL of the page it came with.
    pub(crate) link: Option<(String, String)>,
    /// Seconds since the epoch when upstream last gave this answer.
    pub(crate) checked_at: u64,
}

/// What a tag pointed to when last checked with upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TagEntry {
    pub(crate) digest: String,
    pub(crate) media_type: String,
    pub(crate) size: u64,
    /// Seconds since the epoch when upstream last confirmed this mapping.
    pub(crate) checked_at: u64,
}

pub(crate) struct Meta {
    db: Database,
    touched: Mutex<HashMap<String, u64>>,
}

/// The `served` table's key: digest first, so that a blob's rows are one range.
pub(crate) fn served_key(registry: &str, digest: &Digest) -> String {
    format!("{digest} {registry}")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn db_err(e: impl Into<crate::error::BoxError>) -> Error {
    Error::fault("metadata store", e)
}

impl Meta {
    pub(crate) fn open(path: &Path) -> Result<Meta, Error> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(BLOBS).map_err(db_err)?;
        txn.open_table(TAGS).map_err(db_err)?;
        txn.open_table(PINS).map_err(db_err)?;
        txn.open_table(SERVED).map_err(db_err)?;
        txn.open_table(REFERRERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Meta { db, touched: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn blob(&self, digest: &Digest) -> Result<Option<BlobMeta>, Error> {
        self.get_json(BLOBS, digest.as_str())
    }

    /// Records verified content. Call after the file is published.
    pub(crate) fn record_blob(
        &self,
        digest: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            let previous = match table.get(digest.as_str()).map_err(db_err)? {
                Some(v) => serde_json::from_slice::<BlobMeta>(v.value()).ok(),
                None => None,
            };
            let meta = BlobMeta {
                size,
                media_type: media_type.map(str::to_owned).or_else(|| previous.and_then(|p| p.media_type)),
                last_access: now_secs(),
            };
            let bytes = serde_json::to_vec(&meta).map_err(db_err)?;
            table.insert(digest.as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Every blob's metadata, with accesses not yet flushed applied.
    pub(crate) fn blobs(&self) -> Result<HashMap<String, BlobMeta>, Error> {
        let mut out: HashMap<String, BlobMeta> = self.read_all(BLOBS)?.into_iter().collect();
        for (digest, at) in self.touched.lock().expect("touched lock").iter() {
            if let Some(m) = out.get_mut(digest) {
                m.last_access = m.last_access.max(*at);
            }
        }
        Ok(out)
    }

    /// Forgets a blob. Call after its file is deleted, so that a crash in between leaves a
    /// record without a file (a miss), never a file served without its record.
    pub(crate) fn remove_blob(&self, digest: &Digest) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            txn.open_table(BLOBS).map_err(db_err)?.remove(digest.as_str()).map_err(db_err)?;
            let mut served = txn.open_table(SERVED).map_err(db_err)?;
            let (from, to) = (format!("{digest} "), format!("{digest}!"));
            let keys: Vec<String> = served
                .range(from.as_str()..to.as_str())
                .map_err(db_err)?
                .filter_map(|row| row.ok().map(|(k, _)| k.value().to_owned()))
                .collect();
            for key in keys {
                served.remove(key.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Notes that `registry` served or confirmed `digest`.
    pub(crate) fn record_served(&self, registry: &str, digest: &Digest) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(SERVED)
            .map_err(db_err)?
            .insert(served_key(registry, digest).as_str(), &[][..])
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Whether `registry` served or confirmed `digest`.
    pub(crate) fn served(&self, registry: &str, digest: &Digest) -> Result<bool, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SERVED).map_err(db_err)?;
        Ok(table.get(served_key(registry, digest).as_str()).map_err(db_err)?.is_some())
    }

    /// Notes a read; written to the database by the next `flush_access`.
    pub(crate) fn touch(&self, digest: &Digest) {
        let mut touched = self.touched.lock().expect("touched lock");
        touched.insert(digest.as_str().to_owned(), now_secs());
    }

    /// Writes the accesses noted since the last flush in one transaction.
    pub(crate) fn flush_access(&self) -> Result<usize, Error> {
        let touched = std::mem::take(&mut *self.touched.lock().expect("touched lock"));
        if touched.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut n = 0;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_err)?;
            for (digest, at) in &touched {
                let current = match table.get(digest.as_str()).map_err(db_err)? {
                    Some(v) => serde_json::from_slice::<BlobMeta>(v.value()).ok(),
                    None => None,
                };
                if let Some(mut meta) = current {
                    meta.last_access = meta.last_access.max(*at);
                    let bytes = serde_json::to_vec(&meta).map_err(db_err)?;
                    table.insert(digest.as_str(), bytes.as_slice()).map_err(db_err)?;
                    n += 1;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(n)
    }

    pub(crate) fn put_tag(&self, key: &str, entry: &TagEntry) -> Result<(), Error> {
        self.put_json(TAGS, key, entry)
    }

    pub(crate) fn remove_tag(&self, key: &str) -> Result<(), Error> {
        self.remove(TAGS, key).map(drop)
    }

    /// Removes these tag mappings in one transaction.
    pub(crate) fn remove_tags(&self, keys: &[String]) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(TAGS).map_err(db_err)?;
            for key in keys {
                table.remove(key.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    pub(crate) fn put_pin(&self, image: &str, pin: &Pin) -> Result<(), Error> {
        self.put_json(PINS, image, pin)
    }

    pub(crate) fn remove_pin(&self, image: &str) -> Result<bool, Error> {
        self.remove(PINS, image)
    }

    /// Every pin: image reference → pin.
    pub(crate) fn pins(&self) -> Result<Vec<(String, Pin)>, Error> {
        self.read_all(PINS)
    }

    pub(crate) fn referrers(&self, key: &str) -> Result<Option<ReferrersEntry>, Error> {
        self.get_json(REFERRERS, key)
    }

    /// Keeps `entry` under `key`; past `MAX_REFERRERS` answers, drops the least recently
    /// confirmed tenth.
    pub(crate) fn put_referrers(&self, key: &str, entry: &ReferrersEntry) -> Result<(), Error> {
        self.put_json(REFERRERS, key, entry)?;
        if self.rows(REFERRERS)? <= MAX_REFERRERS as u64 {
            return Ok(());
        }
        let all: Vec<(String, ReferrersEntry)> = self.read_all(REFERRERS)?;
        let mut by_age: Vec<_> = all.into_iter().map(|(k, e)| (e.checked_at, k)).collect();
        by_age.sort_unstable();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(REFERRERS).map_err(db_err)?;
            for (_, k) in by_age.iter().take(MAX_REFERRERS / 10) {
                table.remove(k.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every kept referrers answer (for GC: a subject's referrers are part of its version).
    pub(crate) fn all_referrers(&self) -> Result<Vec<(String, ReferrersEntry)>, Error> {
        self.read_all(REFERRERS)
    }

    /// Every stored tag mapping (loaded once at startup).
    pub(crate) fn tags(&self) -> Result<Vec<(String, TagEntry)>, Error> {
        self.read_all(TAGS)
    }

    fn put_json<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(db_err)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(table).map_err(db_err)?.insert(key, bytes.as_slice()).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn get_json<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let Some(v) = table.get(key).map_err(db_err)? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(db_err)
    }

    /// Removes `key`; whether it was there.
    fn remove(&self, table: Table, key: &str) -> Result<bool, Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let existed = txn.open_table(table).map_err(db_err)?.remove(key).map_err(db_err)?.is_some();
        txn.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// How many rows `table` holds.
    fn rows(&self, table: Table) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        txn.open_table(table).map_err(db_err)?.len().map_err(db_err)
    }

    /// Every row of `table`; unreadable rows are skipped with a warning.
    fn read_all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            match serde_json::from_slice(v.value()) {
                Ok(value) => out.push((k.value().to_owned(), value)),
                Err(e) => tracing::warn!(key = k.value(), error = %e, "skipping an unreadable metadata row"),
            }
        }
        Ok(out)
    }
}
