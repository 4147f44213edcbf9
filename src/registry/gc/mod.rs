//! The collector: builds a snapshot of the disk tier in registry terms (image versions, tags,
//! pins, what is in use), asks `plan` (a pure function beside it) what to evict, and deletes it: file first,
//! then its record, so that a crash in between leaves a miss, never a hit on a deleted blob.

mod bucket;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pins::Pins;
use super::tags::TagCache;
use crate::config::Gc as GcConfig;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::meta::now_secs;
use crate::store::{Store, Stored};
use plan::{Blob, Inventory, Policy, Reason, Version};

pub(crate) struct Collector {
    store: Arc<Store>,
    tags: Arc<TagCache>,
    pins: Arc<Pins>,
    config: GcConfig,
    /// The disk tier's capacity.
    capacity: u64,
    /// `bucket.capacity`, when a bucket is configured with one.
    bucket_capacity: Option<u64>,
    /// One pass at a time.
    running: tokio::sync::Mutex<()>,
}

/// What a pass did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) used_before: u64,
    pub(crate) used_after: u64,
    pub target: u64,
    pub freed: u64,
    pub evicted: Vec<Evicted>,
    /// Roots of the image versions given up.
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evicted {
    pub digest: String,
    pub size: u64,
    pub(crate) reason: &'static str,
}

/// One image version as `GET /api/v1/cache` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CachedImage {
    pub(crate) digest: String,
    pub(crate) tags: Vec<String>,
    pub(crate) size: u64,
    pub(crate) last_pulled: u64,
    pub(crate) pinned: bool,
    pub(crate) blobs: usize,
    pub(crate) in_memory: usize,
}

#[derive(Deserialize)]
struct Refs {
    manifests: Option<Vec<Ref>>,
    config: Option<Ref>,
    layers: Option<Vec<Ref>>,
}

#[derive(Deserialize)]
struct Ref {
    digest: String,
}

impl Collector {
    pub(crate) fn new(
        store: Arc<Store>,
        tags: Arc<TagCache>,
        pins: Arc<Pins>,
        config: GcConfig,
        bucket_capacity: Option<u64>,
    ) -> Self {
        let capacity = store.usage().disk.capacity;
        Collector {
            store,
            tags,
            pins,
            config,
            capacity,
            bucket_capacity,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The usage a pass brings the disk tier down to.
    pub(crate) fn low_target(&self) -> u64 {
        (self.capacity as f64 * self.config.low_watermark) as u64
    }

    /// Runs a pass now if usage is at or above the high watermark.
    pub(crate) async fn maybe_collect(&self) -> Result<Option<Report>, Error> {
        let used = self.store.usage().disk.used;
        let high = (self.capacity as f64 * self.config.high_watermark) as u64;
        let target = if used >= high {
            (self.capacity as f64 * self.config.low_watermark) as u64
        } else if self.config.max_idle.is_some() {
            used // only what has been idle too long
        } else {
            return Ok(None);
        };
        self.collect(target).await.map(Some)
    }

    /// Evicts so that `more` bytes fit beside what is used and promised, as far as the rules
    /// allow (pinned and in-use content stays): the disk tier's `Store::grow` asks this when a
    /// reservation cannot grow. One pass brings usage down to the low watermark, or further
    /// when the bytes need it, so that the next batches fit without another pass.
    pub(crate) async fn free_for(&self, more: u64) {
        let store = &self.store;
        {
            let _one = self.running.lock().await;
            if store.disk_fits(more) {
                return; // another pass made room meanwhile
            }
        }
        let Some(room) = self.capacity.checked_sub(more.saturating_add(store.disk_pending())) else { return };
        if let Err(e) = self.collect(self.low_target().min(room)).await {
            tracing::warn!(error = %e, "GC pass failed");
        }
    }

    /// Evicts until the disk tier holds at most `target` bytes, as far as the rules allow.
    pub(crate) async fn collect(&self, target: u64) -> Result<Report, Error> {
        let _one = self.running.lock().await;
        let inventory = self.inventory().await?;
        let now = now_secs();
        let policy = Policy {
            now,
            in_use_window: self.config.in_use_window.as_secs(),
            target,
            idle_before: self.config.max_idle.map(|idle| now.saturating_sub(idle.as_secs())),
        };
        let used_before = self.store.usage().disk.used;
        let plan = plan::plan(&inventory, &policy);
        let (store, evict) = (self.store.clone(), plan.evict.clone());
        let evicted = tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            for (digest, size, reason) in evict {
                // Read or filled since the inventory was taken: it stays.
                if store.is_busy(&digest) {
                    continue;
                }
                if let Err(e) = store.evict_blocking(&digest) {
                    tracing::warn!(%digest, error = %e, "GC could not delete a blob");
                    continue;
                }
                let reason = match reason {
                    Reason::LeastRecentlyPulled => "least recently pulled",
                    Reason::Unreferenced => "referenced by no manifest",
                    Reason::Idle => "idle longer than max_idle",
                };
                done.push(Evicted { digest: digest.to_string(), size, reason });
            }
            done
        })
        .await
        .map_err(Error::internal)?;
        let report = Report {
            used_before,
            used_after: self.store.usage().disk.used,
            target,
            freed: evicted.iter().map(|e| e.size).sum(),
            evicted,
            versions: plan.versions.iter().map(|d| d.to_string()).collect(),
        };
        metrics::counter!("berth_gc_passes_total").increment(1);
        metrics::counter!("berth_gc_evicted_blobs_total").increment(report.evicted.len() as u64);
        metrics::counter!("berth_gc_freed_bytes_total").increment(report.freed);
        if report.freed > 0 {
            tracing::info!(
                freed = report.freed,
                blobs = report.evicted.len(),
                used = report.used_after,
                "GC pass"
            );
        }
        Ok(report)
    }

    /// Runs `maybe_collect` every `interval` for as long as the collector lives, and the
    /// bucket's rounds when there is a bucket.
    pub(crate) fn spawn(self: &Arc<Self>) {
        self.spawn_bucket();
        let this = Arc::downgrade(self);
        let every = self.config.interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(gc) = this.upgrade() else { return };
                if let Err(e) = gc.maybe_collect().await {
                    tracing::warn!(error = %e, "GC pass failed");
                }
            }
        });
    }

    /// Image versions on disk with their tags, size, last pull and pin.
    pub(crate) async fn images(&self) -> Result<Vec<CachedImage>, Error> {
        let inv = self.inventory().await?;
        let tags = self.tags.tags_by_digest();
        let mut out: Vec<CachedImage> = inv
            .versions
            .iter()
            .map(|v| {
                let present: Vec<&Digest> = v.digests.iter().filter(|d| inv.blobs.contains_key(*d)).collect();
                CachedImage {
                    digest: v.root.to_string(),
                    tags: tags.get(v.root.as_str()).cloned().unwrap_or_default(),
                    size: present.iter().map(|d| inv.blobs[*d].size).sum(),
                    last_pulled: v.last_pulled,
                    pinned: v.pinned,
                    blobs: present.len(),
                    in_memory: present.iter().filter(|d| self.store.held(d).memory).count(),
                }
            })
            .collect();
        out.sort_by_key(|i| std::cmp::Reverse(i.last_pulled));
        Ok(out)
    }

    /// The roots pinned here: a pinned tag keeps the version it pointed to when pinned and
    /// the current one.
    pub(super) async fn pinned_roots(&self) -> Result<HashSet<String>, Error> {
        let mut pinned: HashSet<String> = HashSet::new();
        for (reference, pin) in self.pins.recorded().await? {
            pinned.insert(pin.digest);
            pinned.extend(self.tags.newest(&reference));
        }
        for reference in self.pins.configured() {
            pinned.extend(self.tags.newest(reference));
        }
        Ok(pinned)
    }

    async fn inventory(&self) -> Result<Inventory, Error> {
        let store = self.store.clone();
        let current = self.tags.current_digests();
        let pinned = self.pinned_roots().await?;
        let busy: HashSet<Digest> = store.busy().into_iter().collect();
        tokio::task::spawn_blocking(move || build(&store, &current, &pinned, &busy))
            .await
            .map_err(Error::internal)?
    }
}

/// Reads the store: every blob on disk, its last access, and the versions its manifests form.
fn build(
    store: &Store,
    current: &HashSet<String>,
    pinned: &HashSet<String>,
    busy: &HashSet<Digest>,
) -> Result<Inventory, Error> {
    let referrers = referrers_of_subjects(store)?;
    let items = store.contents_blocking(references)?.into_iter().map(|s: Stored<Option<Vec<Digest>>>| {
        let linked = referrers.get(&s.digest).cloned().unwrap_or_default();
        Item {
            digest: s.digest,
            size: s.size,
            last_access: s.last_access,
            refs: s.manifest.flatten(),
            linked,
        }
    });
    Ok(assemble(items, current, pinned, busy))
}

/// The kept referrers indexes of each subject: part of the subject's version.
fn referrers_of_subjects(store: &Store) -> Result<HashMap<Digest, Vec<Digest>>, Error> {
    let mut out: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for (_, entry) in store.meta().all_referrers()? {
        if let (Ok(subject), Ok(index)) = (Digest::parse(&entry.subject), Digest::parse(&entry.index)) {
            out.entry(subject).or_default().push(index);
        }
    }
    Ok(out)
}

/// What a manifest references (an index's manifests, a manifest's config and layers); None
/// when the bytes are not a manifest.
pub(super) fn references(bytes: &[u8]) -> Option<Vec<Digest>> {
    let refs = serde_json::from_slice::<Refs>(bytes).ok()?;
    let all =
        refs.manifests.into_iter().flatten().chain(refs.config).chain(refs.layers.into_iter().flatten());
    Some(all.filter_map(|r| Digest::parse(&r.digest).ok()).collect())
}

/// One object of a tier as the collector sees it.
pub(super) struct Item {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) last_access: u64,
    /// A manifest's references.
    pub(super) refs: Option<Vec<Digest>>,
    /// The referrers indexes kept for it: part of its version, but not references (they are
    /// what upstream answered, not what its bytes name, so they never decide what is a root).
    pub(super) linked: Vec<Digest>,
}

/// The inventory the plan reads: every object, and the image versions its manifests form
/// (a root manifest or index with everything it references).
pub(super) fn assemble(
    items: impl Iterator<Item = Item>,
    current: &HashSet<String>,
    pinned: &HashSet<String>,
    busy: &HashSet<Digest>,
) -> Inventory {
    let mut inv = Inventory::default();
    let mut children: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut links: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for Item { digest, size, last_access, refs, linked } in items {
        if let Some(list) = refs {
            children.insert(digest.clone(), list);
        }
        if !linked.is_empty() {
            links.insert(digest.clone(), linked);
        }
        inv.blobs.insert(digest.clone(), Blob { size, last_access, busy: busy.contains(&digest) });
    }
    // A blob being filled is not on disk yet, but its version is being pulled right now.
    for d in busy {
        inv.blobs.entry(d.clone()).or_insert(Blob { size: 0, last_access: 0, busy: true });
    }
    // Roots are what no manifest's bytes reference: content addresses cannot form a cycle, so
    // every manifest is a root or under one, whatever the kept referrers say.
    let referenced: HashSet<&Digest> = children.values().flatten().collect();
    let roots: Vec<&Digest> = children.keys().filter(|d| !referenced.contains(d)).collect();
    let mut versions: Vec<Version> = roots
        .iter()
        .map(|&root| {
            let (digests, last_pulled) = reachable(root, &children, &links, &inv.blobs);
            Version {
                root: root.clone(),
                digests,
                last_pulled,
                current: current.contains(root.as_str()),
                pinned: pinned.contains(root.as_str()),
            }
        })
        .collect();
    // A root reached through a referrers link (a referrers index, or a signature tag's
    // manifest) belongs to the version that links it, unless a pin or a tag holds it on its
    // own. It is folded only into a version that is itself not folded, so every folded
    // digest stays in a version that is kept.
    let root_set: HashSet<&Digest> = roots.iter().copied().collect();
    let mut absorbed_by: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for v in &versions {
        for d in v.digests.iter().skip(1).filter(|d| root_set.contains(d)) {
            absorbed_by.entry(d.clone()).or_default().push(v.root.clone());
        }
    }
    versions.retain(|v| {
        v.pinned
            || v.current
            || !absorbed_by.get(&v.root).is_some_and(|by| by.iter().any(|r| !absorbed_by.contains_key(r)))
    });
    versions.sort_by(|a, b| a.root.cmp(&b.root));
    inv.versions = versions;
    inv
}

/// Everything reachable from `root` through references and referrers links (an index, its
/// manifests, their blobs, the referrers kept for any of them), each once, and when any
/// manifest in it was last pulled.
fn reachable(
    root: &Digest,
    children: &HashMap<Digest, Vec<Digest>>,
    links: &HashMap<Digest, Vec<Digest>>,
    blobs: &HashMap<Digest, Blob>,
) -> (Vec<Digest>, u64) {
    let (mut digests, mut seen) = (vec![root.clone()], HashSet::from([root.clone()]));
    let mut last_pulled = blobs.get(root).map_or(0, |b| b.last_access);
    let mut next = 0;
    while let Some(d) = digests.get(next).cloned() {
        next += 1;
        let Some(list) = children.get(&d) else { continue };
        last_pulled = last_pulled.max(blobs.get(&d).map_or(0, |b| b.last_access));
        for child in list.iter().chain(links.get(&d).into_iter().flatten()) {
            if seen.insert(child.clone()) {
                digests.push(child.clone());
            }
        }
    }
    (digests, last_pulled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn manifest(n: u8, refs: &[u8], linked: &[u8]) -> Item {
        Item {
            digest: d(n),
            size: 1,
            last_access: u64::from(n),
            refs: Some(refs.iter().copied().map(d).collect()),
            linked: linked.iter().copied().map(d).collect(),
        }
    }

    fn blob(n: u8) -> Item {
        Item { digest: d(n), size: 1, last_access: 0, refs: None, linked: Vec::new() }
    }

    fn roots(inv: &Inventory) -> Vec<Digest> {
        inv.versions.iter().map(|v| v.root.clone()).collect()
    }

    #[test]
    fn a_kept_referrers_index_and_what_it_lists_fold_into_the_subjects_version() {
        // 1: image over blob 10; 2: referrers index listing signature 3 over blob 11.
        let items = vec![
            manifest(1, &[10], &[2]),
            manifest(2, &[3], &[]),
            manifest(3, &[11], &[]),
            blob(10),
            blob(11),
        ];
        let inv = assemble(items.into_iter(), &HashSet::new(), &HashSet::new(), &HashSet::new());
        assert_eq!(roots(&inv), vec![d(1)]);
        let mut all = inv.versions[0].digests.clone();
        all.sort();
        assert_eq!(all, [1, 2, 3, 10, 11].map(d).to_vec());
        assert_eq!(inv.versions[0].last_pulled, 3, "pulled when any manifest in it was");
    }

    #[test]
    fn referrers_links_never_unroot_a_pinned_or_tagged_image_nor_loop() {
        // A hostile upstream's referrers answers: image 1 links image 4 (pinned) and image 5
        // (a tag's), 4 links back to 1, and 6 and 7 link each other.
        let items = vec![
            manifest(1, &[10], &[4, 5, 1]),
            manifest(4, &[11], &[1]),
            manifest(5, &[12], &[]),
            manifest(6, &[13], &[7]),
            manifest(7, &[14], &[6]),
            blob(10),
            blob(11),
            blob(12),
            blob(13),
            blob(14),
        ];
        let pinned = HashSet::from([d(4).to_string()]);
        let current = HashSet::from([d(5).to_string()]);
        let inv = assemble(items.into_iter(), &current, &pinned, &HashSet::new());
        let mut got = roots(&inv);
        got.sort();
        assert_eq!(got, [1, 4, 5, 6, 7].map(d).to_vec(), "a version went missing or a loop dropped both");
        assert!(inv.versions.iter().find(|v| v.root == d(4)).unwrap().pinned);
        // Every blob stays in some version: none becomes an orphan through a link.
        for b in [10, 11, 12, 13, 14] {
            assert!(inv.versions.iter().any(|v| v.digests.contains(&d(b))), "blob {b} left every version");
        }
    }
}
