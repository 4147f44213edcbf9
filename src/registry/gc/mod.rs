//! The collector: builds a snapshot of the disk tier in registry terms (image versions, tags,
//! pins, what is in use), asks `plan` (a pure function beside it) what to evict, and deletes it: file first,
//! then its record, so that a crash in between leaves a miss, never a hit on a deleted blob.

mod bucket;
mod inventory;
pub mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::pins::Pins;
use super::tags::TagCache;
use crate::config::Gc as GcConfig;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::meta::now_secs;
use crate::store::Store;
use inventory::build;
pub(super) use inventory::{assemble, references, Item};
use plan::{Inventory, Policy, Reason};

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
