//! Tag → digest mappings, keyed by (registry, repository, tag) and then by accept class, kept
//! in memory and in the metadata store so that a restart with upstream gone still resolves tags.
//! At most a bounded number of (registry, repository, tag) bases are kept: past it, the least
//! recently confirmed are dropped from both, pinned ones never.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pins::Pins;
use crate::error::Error;
use crate::store::meta::{now_secs, Meta, TagEntry};

/// `(registry, repository, tag)` as one string: `docker.io/library/alpine:3.20`.
pub(crate) fn base(registry: &str, repo: &str, tag: &str) -> String {
    format!("{registry}/{repo}:{tag}")
}

fn stored_key(base: &str, accept: &str) -> String {
    format!("{base}#{accept}")
}

/// Bases the tag cache keeps (each a few hundred bytes with its accept classes, in memory and
/// in redb): far more tags than a mirror's clients pull within any ttl.
pub(crate) const MAX_BASES: usize = 100_000;

/// base → accept class → entry.
type Entries = HashMap<String, HashMap<String, TagEntry>>;

pub(crate) struct TagCache {
    entries: Mutex<Entries>,
    meta: Arc<Meta>,
    ttl: Duration,
    /// Bases kept at most; past it, the least recently confirmed are dropped.
    cap: usize,
    /// Their bases are never dropped.
    pins: Arc<Pins>,
}

impl TagCache {
    /// Loads the stored mappings, keeping at most `cap` bases (see `trim`); the bases `pins`
    /// names are never dropped.
    pub(crate) fn load(
        meta: Arc<Meta>,
        ttl: Duration,
        cap: usize,
        pins: Arc<Pins>,
    ) -> Result<TagCache, Error> {
        let mut entries = Entries::new();
        for (key, entry) in meta.tags()? {
            if let Some((base, accept)) = key.rsplit_once('#') {
                entries.entry(base.to_owned()).or_default().insert(accept.to_owned(), entry);
            }
        }
        let dropped = trim(&mut entries, cap, &pins.references_blocking()?);
        if !dropped.is_empty() {
            meta.remove_tags(&dropped)?;
        }
        Ok(TagCache { entries: Mutex::new(entries), meta, ttl, cap, pins })
    }

    /// The entry for exactly this accept class.
    pub(crate) fn get(&self, base: &str, accept: &str) -> Option<TagEntry> {
        self.entries.lock().expect("tag lock").get(base)?.get(accept).cloned()
    }

    /// The newest entry made for another accept class whose manifest this class accepts by
    /// name: upstream would have answered it the same, so a docker pull after a
    /// containerd-style lookup (or a preheat) needs no upstream request.
    pub(crate) fn compatible(&self, base: &str, accepts: impl Fn(&str) -> bool) -> Option<TagEntry> {
        let entries = self.entries.lock().expect("tag lock");
        entries.get(base)?.values().filter(|e| accepts(&e.media_type)).max_by_key(|e| e.checked_at).cloned()
    }

    /// Every digest a tag points to now (in any accept class).
    pub(crate) fn current_digests(&self) -> std::collections::HashSet<String> {
        let entries = self.entries.lock().expect("tag lock");
        entries.values().flat_map(|classes| classes.values().map(|e| e.digest.clone())).collect()
    }

    /// Tags pointing to each digest, as `registry/repo:tag`.
    pub(crate) fn tags_by_digest(&self) -> HashMap<String, Vec<String>> {
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
    pub(crate) fn newest(&self, base: &str) -> Option<String> {
        let entries = self.entries.lock().expect("tag lock");
        entries.get(base)?.values().max_by_key(|e| e.checked_at).map(|e| e.digest.clone())
    }

    /// Whether upstream confirmed `entry` within the ttl.
    pub(crate) fn is_fresh(&self, entry: &TagEntry) -> bool {
        self.is_fresh_at(entry.checked_at)
    }

    /// Whether an answer upstream gave at `checked_at` is within the ttl.
    pub(crate) fn is_fresh_at(&self, checked_at: u64) -> bool {
        now_secs().saturating_sub(checked_at) < self.ttl.as_secs().max(1)
    }

    pub(crate) async fn put(&self, base: &str, accept: &str, entry: TagEntry) -> Result<(), Error> {
        let full = {
            let mut entries = self.entries.lock().expect("tag lock");
            entries.entry(base.to_owned()).or_default().insert(accept.to_owned(), entry.clone());
            entries.len() > self.cap
        };
        let (meta, key) = (self.meta.clone(), stored_key(base, accept));
        tokio::task::spawn_blocking(move || meta.put_tag(&key, &entry)).await.map_err(Error::internal)??;
        if full {
            self.drop_least_recently_confirmed().await?;
        }
        Ok(())
    }

    /// Makes room past the cap (see `trim`), in memory and in redb, keeping every base a pin
    /// names: those of `[[pin]]` and those pinned through the admin API or a preheat.
    async fn drop_least_recently_confirmed(&self) -> Result<(), Error> {
        let kept = self.pins.references().await?;
        let dropped = trim(&mut self.entries.lock().expect("tag lock"), self.cap, &kept);
        if dropped.is_empty() {
            return Ok(());
        }
        tracing::info!(mappings = dropped.len(), "tag cache full: dropped the least recently confirmed tags");
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.remove_tags(&dropped)).await.map_err(Error::internal)?
    }

    pub(crate) async fn remove(&self, base: &str, accept: &str) -> Result<(), Error> {
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

/// With more than `cap` bases, drops the least recently confirmed (the newest `checked_at` of
/// their accept classes) down to nine tenths of `cap`, so that the next drop is a tenth of the
/// inserts away; a base in `kept` stays whatever its age. Returns the stored keys dropped.
fn trim(entries: &mut Entries, cap: usize, kept: &HashSet<String>) -> Vec<String> {
    if entries.len() <= cap {
        return Vec::new();
    }
    let target = cap.saturating_sub(cap / 10);
    let mut candidates: Vec<(u64, &String)> = entries
        .iter()
        .filter(|(base, _)| !kept.contains(*base))
        .map(|(base, classes)| (classes.values().map(|e| e.checked_at).max().unwrap_or(0), base))
        .collect();
    let excess = entries.len().saturating_sub(target).min(candidates.len());
    if excess == 0 {
        return Vec::new();
    }
    candidates.select_nth_unstable(excess - 1);
    let oldest: Vec<String> = candidates[..excess].iter().map(|(_, base)| (*base).clone()).collect();
    let mut dropped = Vec::new();
    for base in oldest {
        if let Some(classes) = entries.remove(&base) {
            dropped.extend(classes.keys().map(|accept| stored_key(&base, accept)));
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::Pin;

    const TTL: Duration = Duration::from_secs(300);

    fn entry(checked_at: u64) -> TagEntry {
        TagEntry {
            digest: format!("sha256:{checked_at:064x}"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
            checked_at,
        }
    }

    fn numbered(i: u64) -> String {
        base("docker.io", &format!("library/app{i}"), "1")
    }

    fn bases(cache: &TagCache) -> HashSet<String> {
        cache.entries.lock().unwrap().keys().cloned().collect()
    }

    #[tokio::test]
    async fn the_map_stays_bounded_keeps_the_newest_and_pinned_bases_and_a_restart_sees_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(Meta::open(&dir.path().join("meta.redb")).unwrap());
        let pinned = vec![base("docker.io", "library/pinned", "3.20")];
        let runtime_pin = base("docker.io", "library/pinned-later", "1");
        let pin = Pin { digest: entry(2).digest, pinned_at: 2 };
        meta.put_pin(&runtime_pin, &pin).unwrap();
        let pins = Arc::new(Pins::new(meta.clone(), pinned.clone()));
        let cache = TagCache::load(meta.clone(), TTL, 100, pins.clone()).unwrap();
        // The pinned bases are the least recently confirmed of all.
        cache.put(&pinned[0], "oci", entry(1)).await.unwrap();
        cache.put(&runtime_pin, "oci", entry(2)).await.unwrap();
        for i in 0..400 {
            cache.put(&numbered(i), "oci", entry(100 + i)).await.unwrap();
            cache.put(&numbered(i), "docker", entry(100 + i)).await.unwrap();
            assert!(bases(&cache).len() <= 100, "{} bases after {i}", bases(&cache).len());
        }
        let kept = bases(&cache);
        assert!(kept.len() >= 90, "dropped more than a batch: {}", kept.len());
        for i in 320..400 {
            assert!(cache.get(&numbered(i), "docker").is_some(), "a newest base was dropped: {i}");
        }
        assert!(cache.get(&numbered(0), "oci").is_none(), "the oldest base was kept");
        assert!(cache.get(&pinned[0], "oci").is_some(), "a [[pin]] base was dropped");
        assert!(cache.get(&runtime_pin, "oci").is_some(), "a pinned base was dropped");

        drop(cache);
        let again = TagCache::load(meta.clone(), TTL, 100, pins.clone()).unwrap();
        assert_eq!(bases(&again), kept, "a restart sees other bases");
        assert_eq!(meta.tags().unwrap().len(), 2 * kept.len() - 2, "redb holds dropped mappings");

        // A smaller cap at startup trims what was stored, newest kept, pins kept.
        drop(again);
        let smaller = TagCache::load(meta.clone(), TTL, 20, pins.clone()).unwrap();
        let left = bases(&smaller);
        assert!(left.len() <= 20, "{} bases", left.len());
        assert!(left.contains(&pinned[0]) && left.contains(&runtime_pin));
        assert!(left.contains(&numbered(399)));
        drop(smaller);
        let after = TagCache::load(meta, TTL, 100, pins).unwrap();
        assert_eq!(bases(&after), left, "the trim at startup was not stored");
    }

    #[test]
    fn a_trim_with_only_kept_bases_past_the_cap_drops_none_of_them() {
        let mut entries = Entries::new();
        let kept: HashSet<String> = (0..5).map(numbered).collect();
        for b in kept.iter().chain([numbered(5)].iter()) {
            entries.entry(b.clone()).or_default().insert("oci".into(), entry(1));
        }
        assert_eq!(trim(&mut entries, 2, &kept), vec![stored_key(&numbered(5), "oci")]);
        assert_eq!(entries.len(), 5);
        assert!(trim(&mut entries, 2, &kept).is_empty());
    }
}
