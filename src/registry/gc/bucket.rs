//! The bucket GC: once an hour, the one berth of the fleet that wins `v1/gc` lists the bucket
//! and keeps it within `bucket.capacity` by the same rules as the disk tier (`plan`): image
//! versions least recently pulled first, never a pinned one (pinned by the pass's berth, or by
//! any berth's pin marker from the last week), never one being filled (a fill lease). Every
//! berth refreshes the pin markers of what it pins. The pass also deletes markers and leases
//! that describe nothing any more (`Listing::stale`). What the pass counted is shown by the
//! cache API (`bucket.counted`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::plan::{self, Policy};
use super::Evicted;
use super::{assemble, references, Collector, Item, Report};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::meta::now_secs;

/// How often a berth tries to run the fleet's pass, and refreshes its pin markers.
const EVERY: Duration = Duration::from_secs(3600);
/// How far behind reads the access markers may be: each berth writes one at most daily, and
/// remembers for a day that it did.
const MARKER_LAG: Duration = Duration::from_secs(2 * 86_400);
/// A pin marker not refreshed for this long no longer pins.
const PIN_TTL: Duration = Duration::from_secs(7 * 86_400);

impl Collector {
    /// Every hour (the first a minute after startup): pin markers refreshed, then the fleet's
    /// pass when this berth wins it.
    pub(crate) fn spawn_bucket(self: &Arc<Self>) {
        if !self.store.uploads_to_bucket() {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            loop {
                let Some(gc) = this.upgrade() else { return };
                if let Err(e) = gc.bucket_round().await {
                    tracing::warn!(error = %e, "bucket GC pass failed");
                }
                drop(gc);
                tokio::time::sleep(EVERY).await;
            }
        });
    }

    async fn bucket_round(&self) -> Result<Option<Report>, Error> {
        let Some(bucket) = self.store.bucket() else { return Ok(None) };
        let pinned = self.pinned_roots().await?;
        for root in pinned.iter().filter_map(|d| Digest::parse(d).ok()) {
            bucket.pin_marker(&root);
        }
        if !bucket.claim_gc(EVERY).await {
            return Ok(None);
        }
        self.bucket_pass(&pinned, MARKER_LAG, now_secs()).await.map(Some)
    }

    /// One pass over the bucket: counts it, and evicts down to the low watermark of
    /// `bucket.capacity` once usage reaches its high watermark.
    pub(super) async fn bucket_pass(
        &self,
        pinned_here: &HashSet<String>,
        marker_lag: Duration,
        now: u64,
    ) -> Result<Report, Error> {
        let Some(bucket) = self.store.bucket() else { return Err(Error::Internal("no bucket".into())) };
        let listing = bucket.listing(PIN_TTL, now, references).await;
        let listing = listing.map_err(|e| Error::Unavailable(format!("bucket: {e}")))?;
        let mut pinned = pinned_here.clone();
        pinned.extend(listing.pins.iter().map(|d| d.to_string()));
        let items = listing.objects.into_iter().map(|l| Item {
            refs: l.manifest,
            digest: l.digest,
            size: l.size,
            last_access: l.last_access,
            linked: Vec::new(),
        });
        let inventory = assemble(items, &HashSet::new(), &pinned, &listing.busy);
        let used_before = inventory.usage();
        bucket.counted(inventory.blobs.values().filter(|b| b.size > 0).count() as u64, used_before);
        let target = match self.bucket_capacity {
            Some(cap) if used_before >= (cap as f64 * self.config.high_watermark) as u64 => {
                (cap as f64 * self.config.low_watermark) as u64
            }
            _ => used_before,
        };
        // Access markers lag reads by up to two days (each berth writes one at most daily).
        let in_use_window = self.config.in_use_window.as_secs() + marker_lag.as_secs();
        let policy = Policy { now, in_use_window, target, idle_before: None };
        let plan = plan::plan(&inventory, &policy);
        let mut evicted = Vec::new();
        // A pinned digest is never deleted, even as an object no version references.
        for (digest, size, _) in plan.evict.into_iter().filter(|(d, ..)| !pinned.contains(d.as_str())) {
            match bucket.evict(&digest).await {
                Ok(()) => evicted.push(Evicted {
                    digest: digest.to_string(),
                    size,
                    reason: "least recently pulled",
                }),
                Err(e) => tracing::warn!(%digest, error = %e, "bucket GC could not delete an object"),
            }
        }
        let freed = evicted.iter().map(|e| e.size).sum();
        if freed > 0 {
            bucket.counted(
                inventory.blobs.len().saturating_sub(evicted.len()) as u64,
                used_before.saturating_sub(freed),
            );
            tracing::info!(freed, objects = evicted.len(), "bucket GC pass");
        }
        metrics::counter!("berth_bucket_gc_evicted_total").increment(evicted.len() as u64);
        if !listing.stale.is_empty() {
            let (found, deleted) = (listing.stale.len(), bucket.delete_stale(listing.stale).await);
            tracing::info!(found, deleted, "bucket GC: stale markers and leases deleted");
        }
        Ok(Report {
            used_before,
            used_after: used_before.saturating_sub(freed),
            target,
            freed,
            evicted,
            versions: plan.versions.iter().map(|d| d.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

    use super::*;
    use crate::config::{Config, Storage};
    use crate::registry::pins::Pins;
    use crate::registry::tags::TagCache;
    use crate::store::bucket::Bucket;
    use crate::store::Store;

    const CONFIG: &str = "[server]\ndefault_registry = \"test\"\n[bucket]\nurl = \"s3://berth-test/fleet\"\ncapacity = \"100KB\"\n[gc]\nhigh_watermark = 0.9\nlow_watermark = 0.5\nin_use_window = \"1s\"\n[[registry]]\nhost = \"test\"\nendpoint = \"https://test.invalid\"\n";

    async fn put(objects: &InMemory, path: String, bytes: Bytes, media_type: Option<&str>) {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("registry".into()), "test".into());
        if let Some(t) = media_type {
            attributes.insert(Attribute::ContentType, t.to_owned().into());
        }
        let opts = PutOptions { attributes, ..PutOptions::default() };
        objects.put_opts(&Path::from(path), PutPayload::from(bytes), opts).await.unwrap();
    }

    /// An image of one 30 KB layer and a config in the bucket; its manifest's digest.
    async fn image(objects: &InMemory, n: u8) -> Digest {
        let layer = Bytes::from(vec![n; 30_000]);
        let config = Bytes::from(format!("{{\"n\":{n}}}"));
        let (ld, cd) = (Digest::of(&layer), Digest::of(&config));
        put(objects, format!("fleet/v1/blobs/sha256/{}", ld.hex()), layer, None).await;
        put(objects, format!("fleet/v1/blobs/sha256/{}", cd.hex()), config, None).await;
        let manifest = Bytes::from(format!(
            "{{\"schemaVersion\":2,\"config\":{{\"digest\":\"{cd}\"}},\"layers\":[{{\"digest\":\"{ld}\"}}]}}"
        ));
        let md = Digest::of(&manifest);
        let media_type = Some("application/vnd.oci.image.manifest.v1+json");
        put(objects, format!("fleet/v1/manifests/sha256/{}", md.hex()), manifest, media_type).await;
        md
    }

    async fn listed(objects: &InMemory, prefix: &str) -> usize {
        futures::StreamExt::count(objects.list(Some(&Path::from(prefix)))).await
    }

    /// A store on `objects` and its collector, with the bucket `capacity` 100 KB.
    fn collector(objects: &Arc<InMemory>) -> (tempfile::TempDir, Arc<Store>, Collector) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(CONFIG).unwrap();
        let clients: (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) = (objects.clone(), objects.clone());
        let bucket = Bucket::new(clients, config.bucket.as_ref().unwrap(), "me");
        let storage = Storage {
            dir: dir.path().to_owned(),
            memory_capacity: 1 << 20,
            memory_max_object: 1 << 16,
            disk_capacity: 1 << 24,
            max_fills: 4,
            max_blob_size: 1 << 24,
            fill_connections: 1,
            fill_connections_above: u64::MAX,
        };
        let store = Store::open_with(&storage, Some(bucket)).unwrap();
        let pins = Arc::new(Pins::new(store.meta().clone(), Vec::new()));
        let tags = Arc::new(
            TagCache::load(store.meta().clone(), Duration::from_secs(60), 100, pins.clone()).unwrap(),
        );
        let gc = Collector::new(store.clone(), tags, pins, config.gc.clone(), Some(100_000));
        (dir, store, gc)
    }

    #[tokio::test]
    async fn a_pass_keeps_the_bucket_within_capacity_and_never_evicts_a_pinned_or_filling_version() {
        let objects = Arc::new(InMemory::new());
        let (_dir, store, gc) = collector(&objects);

        // Four images of ~30 KB in a 100 KB bucket: over the 90% watermark.
        let (pinned_here, pinned_elsewhere, filling, plain) = (
            image(&objects, 1).await,
            image(&objects, 2).await,
            image(&objects, 3).await,
            image(&objects, 4).await,
        );
        put(&objects, format!("fleet/v1/pins/sha256/{}", pinned_elsewhere.hex()), Bytes::new(), None).await;
        // Image 3's layer is being filled somewhere: its fill lease is there.
        let layer3 = Digest::of(&vec![3u8; 30_000]);
        put(&objects, format!("fleet/v1/fills/{}", layer3.hex()), Bytes::new(), None).await;

        // A blob no manifest references, pinned by a berth's marker: never deleted.
        let orphan = Bytes::from(vec![9u8; 5_000]);
        let orphan_digest = Digest::of(&orphan);
        put(&objects, format!("fleet/v1/blobs/sha256/{}", orphan_digest.hex()), orphan, None).await;
        put(&objects, format!("fleet/v1/pins/sha256/{}", orphan_digest.hex()), Bytes::new(), None).await;
        // Past the in-use window (1 s here): what was uploaded just now is in use.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let here: HashSet<String> = [pinned_here.to_string()].into();
        let report = gc.bucket_pass(&here, Duration::ZERO, now_secs()).await.unwrap();
        assert!(report.used_before > 100_000 * 9 / 10, "{report:?}");
        // Down towards the low watermark as far as the rules allow: only the plain version goes.
        assert_eq!(report.versions, vec![plain.to_string()], "{report:?}");
        assert_eq!(report.evicted.len(), 3, "{report:?}");
        let manifests = |d: &Digest| format!("fleet/v1/manifests/sha256/{}", d.hex());
        for kept in [&pinned_here, &pinned_elsewhere, &filling] {
            assert!(objects.head(&Path::from(manifests(kept))).await.is_ok(), "{kept} was evicted");
        }
        assert!(objects.head(&Path::from(manifests(&plain))).await.is_err(), "the unpinned version stayed");
        let layer4 = Digest::of(&vec![4u8; 30_000]);
        assert!(objects.head(&Path::from(format!("fleet/v1/blobs/sha256/{}", layer4.hex()))).await.is_err());
        assert_eq!(
            listed(&objects, "fleet/v1/blobs").await,
            7,
            "the kept versions' blobs and the pinned blob are all there"
        );
        let counted = store.bucket().unwrap().status().counted.unwrap();
        assert_eq!(counted.bytes, report.used_after);
    }

    #[tokio::test]
    async fn a_pass_deletes_markers_and_leases_that_describe_nothing_and_keeps_the_rest() {
        let objects = Arc::new(InMemory::new());
        let (_dir, _store, gc) = collector(&objects);
        let kept = image(&objects, 1).await;
        let gone = Digest::of(b"gone");
        let marker = |kind: &str, d: &Digest| format!("fleet/v1/{kind}/sha256/{}", d.hex());
        for path in [
            marker("access", &kept),
            marker("access", &gone),
            marker("pins", &gone),
            format!("fleet/v1/fills/{}", gone.hex()),
        ] {
            put(&objects, path, Bytes::new(), None).await;
        }
        let exists = async |path: String| objects.head(&Path::from(path)).await.is_ok();
        // Today nothing is stale.
        gc.bucket_pass(&HashSet::new(), Duration::ZERO, now_secs()).await.unwrap();
        assert!(
            exists(marker("access", &gone)).await && exists(format!("fleet/v1/fills/{}", gone.hex())).await
        );
        // Fifteen days on: the gone object's marker, the old pin and the dead lease go.
        let later = now_secs() + 15 * 86_400;
        let report = gc.bucket_pass(&HashSet::new(), Duration::ZERO, later).await.unwrap();
        assert!(report.evicted.is_empty(), "{report:?}");
        assert!(!exists(marker("access", &gone)).await, "a marker of a gone object stayed");
        assert!(!exists(marker("pins", &gone)).await, "a pin marker two weeks old stayed");
        assert!(!exists(format!("fleet/v1/fills/{}", gone.hex())).await, "a dead lease stayed");
        assert!(exists(marker("access", &kept)).await, "a held object's marker was deleted");
        assert!(exists(format!("fleet/v1/manifests/sha256/{}", kept.hex())).await);
    }

    #[tokio::test]
    async fn a_stale_marker_written_again_after_the_listing_is_not_deleted() {
        let objects = Arc::new(InMemory::new());
        let (_dir, store, _gc) = collector(&objects);
        let pin = format!("fleet/v1/pins/sha256/{}", Digest::of(b"pinned again").hex());
        put(&objects, pin.clone(), Bytes::new(), None).await;
        let bucket = store.bucket().unwrap();
        let listing = bucket.listing(PIN_TTL, now_secs() + 15 * 86_400, references).await.unwrap();
        assert_eq!(listing.stale.len(), 1, "{:?}", listing.stale);
        // A berth refreshes its pin between the listing and the deletion.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        put(&objects, pin.clone(), Bytes::new(), None).await;
        assert_eq!(bucket.delete_stale(listing.stale).await, 0);
        assert!(objects.head(&Path::from(pin)).await.is_ok(), "a refreshed pin marker was deleted");
    }
}
