//! Tag → digest mappings, keyed by (registry, repository, tag, accept class), kept in memory
//! and in the metadata store so that a restart with upstream gone still resolves tags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::store::meta::{now_secs, Meta, TagEntry};

pub struct TagCache {
    entries: Mutex<HashMap<String, TagEntry>>,
    meta: Arc<Meta>,
    ttl: Duration,
}

pub fn key(registry: &str, repo: &str, tag: &str, accept: &str) -> String {
    format!("{registry}/{repo}:{tag}#{accept}")
}

impl TagCache {
    /// Loads the stored mappings.
    pub fn load(meta: Arc<Meta>, ttl: Duration) -> Result<TagCache, Error> {
        let entries = meta.tags()?.into_iter().collect();
        Ok(TagCache { entries: Mutex::new(entries), meta, ttl })
    }

    pub fn get(&self, key: &str) -> Option<TagEntry> {
        self.entries.lock().expect("tag lock").get(key).cloned()
    }

    /// Whether upstream confirmed `entry` within the ttl.
    pub fn is_fresh(&self, entry: &TagEntry) -> bool {
        now_secs().saturating_sub(entry.checked_at) < self.ttl.as_secs().max(1)
    }

    pub async fn put(&self, key: String, entry: TagEntry) -> Result<(), Error> {
        self.entries.lock().expect("tag lock").insert(key.clone(), entry.clone());
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.put_tag(&key, &entry)).await.map_err(Error::internal)?
    }

    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        self.entries.lock().expect("tag lock").remove(key);
        let (meta, key) = (self.meta.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || meta.remove_tag(&key)).await.map_err(Error::internal)?
    }
}
