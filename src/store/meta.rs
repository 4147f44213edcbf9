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

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;

const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");

/// An image a user asked to keep: recorded now, honoured by GC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    pub digest: String,
    pub pinned_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobMeta {
    pub size: u64,
    /// Set for content fetched as a manifest: the exact `Content-Type` to answer with.
    pub media_type: Option<String>,
    /// Seconds since the epoch.
    pub last_access: u64,
}

/// What a tag pointed to when last checked with upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Seconds since the epoch when upstream last confirmed this mapping.
    pub checked_at: u64,
}

pub struct Meta {
    db: Database,
    touched: Mutex<HashMap<String, u64>>,
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("metadata store: {e}"))
}

impl Meta {
    pub fn open(path: &Path) -> Result<Meta, Error> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(BLOBS).map_err(db_err)?;
        txn.open_table(TAGS).map_err(db_err)?;
        txn.open_table(PINS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Meta { db, touched: Mutex::new(HashMap::new()) })
    }

    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobMeta>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(BLOBS).map_err(db_err)?;
        let Some(v) = table.get(digest.as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value()).map(Some).map_err(db_err)
    }

    /// Records verified content. Call after the file is published.
    pub fn record_blob(&self, digest: &Digest, size: u64, media_type: Option<&str>) -> Result<(), Error> {
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
    pub fn blobs(&self) -> Result<HashMap<String, BlobMeta>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(BLOBS).map_err(db_err)?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if let Ok(meta) = serde_json::from_slice::<BlobMeta>(v.value()) {
                out.insert(k.value().to_owned(), meta);
            }
        }
        for (digest, at) in self.touched.lock().expect("touched lock").iter() {
            if let Some(m) = out.get_mut(digest) {
                m.last_access = m.last_access.max(*at);
            }
        }
        Ok(out)
    }

    /// Forgets a blob. Call after its file is deleted, so that a crash in between leaves a
    /// record without a file (a miss), never a file served without its record.
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(BLOBS).map_err(db_err)?.remove(digest.as_str()).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Notes a read; written to the database by the next `flush_access`.
    pub fn touch(&self, digest: &Digest) {
        let mut touched = self.touched.lock().expect("touched lock");
        touched.insert(digest.as_str().to_owned(), now_secs());
    }

    /// Writes the accesses noted since the last flush in one transaction.
    pub fn flush_access(&self) -> Result<usize, Error> {
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

    pub fn put_tag(&self, key: &str, entry: &TagEntry) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(TAGS).map_err(db_err)?;
            let bytes = serde_json::to_vec(entry).map_err(db_err)?;
            table.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn remove_tag(&self, key: &str) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(TAGS).map_err(db_err)?.remove(key).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    pub fn put_pin(&self, image: &str, pin: &Pin) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(PINS).map_err(db_err)?;
            let bytes = serde_json::to_vec(pin).map_err(db_err)?;
            table.insert(image, bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn remove_pin(&self, image: &str) -> Result<bool, Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let existed = txn.open_table(PINS).map_err(db_err)?.remove(image).map_err(db_err)?.is_some();
        txn.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Every pin: image reference → pin.
    pub fn pins(&self) -> Result<Vec<(String, Pin)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PINS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if let Ok(pin) = serde_json::from_slice(v.value()) {
                out.push((k.value().to_owned(), pin));
            }
        }
        Ok(out)
    }

    pub fn pin(&self, image: &str) -> Result<Option<Pin>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PINS).map_err(db_err)?;
        let Some(v) = table.get(image).map_err(db_err)? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(db_err)
    }

    /// Every stored tag mapping (loaded once at startup).
    pub fn tags(&self) -> Result<Vec<(String, TagEntry)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(TAGS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            match serde_json::from_slice(v.value()) {
                Ok(entry) => out.push((k.value().to_owned(), entry)),
                Err(e) => {
                    tracing::warn!(tag = k.value(), error = %e, "skipping unreadable tag entry")
                }
            }
        }
        Ok(out)
    }
}
