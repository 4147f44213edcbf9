//! Tag → digest mappings, keyed by (registry, repository, tag) and then by accept class, kept
//! in memory and in the metadata store so that a restart with upstream gone still resolves tags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::store::meta::{now_secs, Meta, TagEntry};

/// `(registry, repository, tag)` as one string: `docker.io/library/alpine:3.20`.
pub fn base(registry: &str, repo: &str, tag: &str) -> String {
    format!("{registry}/{repo}:{tag}")
}

fn stored_key(base: &str, accept: &str) -> String {
    format!("{base}#{accept}")
}

pub struct TagCache {
    /// base → accept class → entry.
    entries: Mutex<HashMap<String, HashMap<String, TagEntry>>>,
    meta: Arc<Meta>,
    ttl: Duration,
}

impl TagCache {
    /// Loads the stored mappings.
    pub fn load(meta: Arc<Meta>, ttl: Duration) -> Result<TagCache, Error> {
        let mut entries: HashMap<String, HashMap<String, TagEntry>> = HashMap::new();
        for (key, entry) in meta.tags()? {
            if let Some((base, accept)) = key.rsplit_once('#') {
                entries.entry(base.to_owned()).or_default().insert(accept.to_owned(), entry);
            }
        }
        Ok(TagCache { entries: Mutex::new(entries), meta, ttl })
    }

    /// The entry for exactly this accept class.
    pub fn get(&self, base: &str, accept: &str) -> Option<TagEntry> {
        self.entries.lock().expect("tag lock").get(base)?.get(accept).cloned()
    }

    /// The newest entry made for another accept class whose manifest this class accepts by
    /// name: upstream would have answered it the same, so a docker pull after a
    /// containerd-style lookup (or a preheat) needs no upstream request.
    pub fn compatible(&self, base: &str, accepts: impl Fn(&str) -> bool) -> Option<TagEntry> {
        let entries = self.entries.lock().expect("tag lock");
        entries.get(base)?.values().filter(|e| accepts(&e.media_type)).max_by_key(|e| e.checked_at).cloned()
    }

    /// Every digest a tag points to now (in any accept class).
    pub fn current_digests(&self) -> std::collections::HashSet<String> {
        let entries = self.entries.lock().expect("tag lock");
        entries.values().flat_map(|classes| classes.values().map(|e| e.digest.clone())).collect()
    }

    /// Tags pointing to each digest, as `registry/repo:tag`.
    pub fn tags_by_digest(&self) -> HashMap<String, Vec<String>> {
        let entries = self.entries.lock().expect("tag lock");
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for (base, classes) in entries.iter() {
            for e in classes.values() {
                let tags = out.entry(e.digest.clone()).or_default();
                if !tags.contains(base) {
                    tags.push(base.clone());
                }
            }
        }
        out
    }

    /// The newest digest `base` points to, in any accept class.
    pub fn newest(&self, base: &str) -> Option<String> {
        let entries = self.entries.lock().expect("tag lock");
        entries.get(base)?.values().max_by_key(|e| e.checked_at).map(|e| e.digest.clone())
    }

    /// Whether upstream confirmed `entry` within the ttl.
    pub fn is_fresh(&self, entry: &TagEntry) -> bool {
        now_secs().saturating_sub(entry.checked_at) < self.ttl.as_secs().max(1)
    }

    pub async fn put(&self, base: &str, accept: &str, entry: TagEntry) -> Result<(), Error> {
        {
            let mut entries = self.entries.lock().expect("tag lock");
            entries.entry(base.to_owned()).or_default().insert(accept.to_owned(), entry.clone());
        }
        let (meta, key) = (self.meta.clone(), stored_key(base, accept));
        tokio::task::spawn_blocking(move || meta.put_tag(&key, &entry)).await.map_err(Error::internal)?
    }

    pub async fn remove(&self, base: &str, accept: &str) -> Result<(), Error> {
        {
            let mut entries = self.entries.lock().expect("tag lock");
            if let Some(classes) = entries.get_mut(base) {
                classes.remove(accept);
                if classes.is_empty() {
                    entries.remove(base);
                }
            }
        }
        let (meta, key) = (self.meta.clone(), stored_key(base, accept));
        tokio::task::spawn_blocking(move || meta.remove_tag(&key)).await.map_err(Error::internal)?
    }
}
