//! A preheat job's state, and its status (`status::JobStatus`). The `tiers` of every item are
//! read from the tiers when the status is built, never remembered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use super::status::{ImageStatus, ItemKind, ItemState, ItemStatus, JobState, JobStatus, TierName};
use crate::oci::digest::Digest;
use crate::store::Store;

/// One piece of content of an image: an index, a manifest, a config or a layer.
pub(crate) struct Item {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) kind: ItemKind,
    pub(crate) platform: Option<String>,
    pub(crate) done: AtomicU64,
    state: Mutex<(ItemState, Option<String>)>,
    note: Mutex<Option<String>>,
}

impl Item {
    pub(crate) fn new(digest: Digest, size: u64, kind: ItemKind, platform: Option<String>) -> Arc<Item> {
        Arc::new(Item {
            digest,
            size,
            kind,
            platform,
            done: AtomicU64::new(0),
            state: Mutex::new((ItemState::Pending, None)),
            note: Mutex::new(None),
        })
    }

    pub(crate) fn set(&self, state: ItemState, error: Option<String>) {
        *self.state.lock().expect("item lock") = (state, error);
    }

    pub(crate) fn state(&self) -> ItemState {
        self.state.lock().expect("item lock").0
    }

    pub(crate) fn note(&self, note: String) {
        *self.note.lock().expect("item lock") = Some(note);
    }
}

/// One image of a job.
pub(crate) struct ImageJob {
    /// The reference as normalised (`docker.io/library/alpine:3.20`).
    pub(crate) reference: String,
    pub(crate) resolved: Mutex<Option<(Digest, String)>>,
    pub(crate) platforms: Mutex<Vec<String>>,
    pub(crate) items: Mutex<Vec<Arc<Item>>>,
    pub(crate) error: Mutex<Option<String>>,
}

impl ImageJob {
    pub(crate) fn new(reference: String) -> ImageJob {
        ImageJob {
            reference,
            resolved: Mutex::new(None),
            platforms: Mutex::new(Vec::new()),
            items: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        }
    }

    pub(crate) fn push(&self, item: Arc<Item>) {
        self.items.lock().expect("image lock").push(item);
    }

    pub(crate) fn fail(&self, error: String) {
        self.error.lock().expect("image lock").get_or_insert(error);
    }

    pub(crate) fn items(&self) -> Vec<Arc<Item>> {
        self.items.lock().expect("image lock").clone()
    }

    /// Whether the image resolved and every item is cached.
    pub(crate) fn succeeded(&self) -> bool {
        self.error.lock().expect("image lock").is_none()
            && self.items().iter().all(|i| i.state() == ItemState::Cached)
    }
}

pub(crate) struct Job {
    pub(crate) id: String,
    pub(crate) images: Vec<ImageJob>,
    pub(crate) platforms: Vec<String>,
    pub(crate) tiers: Vec<TierName>,
    pub(crate) pin: bool,
    /// Peers were asked to preheat the same digests (`"scope": "cluster"`).
    pub(crate) cluster: bool,
    /// The images' signatures and attestations are warmed too (`"referrers": true`).
    pub(crate) referrers: bool,
    /// Their jobs, once asked.
    pub(crate) peer_jobs: Mutex<Vec<super::cluster::PeerJob>>,
    created: SystemTime,
    times: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    state: watch::Sender<JobState>,
}

impl Job {
    pub(crate) fn new(
        id: String,
        images: Vec<ImageJob>,
        platforms: Vec<String>,
        tiers: Vec<TierName>,
        pin: bool,
    ) -> Job {
        Job {
            id,
            images,
            platforms,
            tiers,
            pin,
            cluster: false,
            referrers: false,
            peer_jobs: Mutex::new(Vec::new()),
            created: SystemTime::now(),
            times: Mutex::new((None, None)),
            state: watch::channel(JobState::Queued).0,
        }
    }

    pub(crate) fn in_cluster(mut self, cluster: bool) -> Job {
        self.cluster = cluster;
        self
    }

    pub(crate) fn with_referrers(mut self, referrers: bool) -> Job {
        self.referrers = referrers;
        self
    }

    pub(crate) fn state(&self) -> JobState {
        *self.state.borrow()
    }

    pub(crate) fn start(&self) {
        self.times.lock().expect("job lock").0 = Some(SystemTime::now());
        self.state.send_replace(JobState::Running);
    }

    pub(crate) fn finish(&self) {
        self.times.lock().expect("job lock").1 = Some(SystemTime::now());
        let ok = self.images.iter().all(ImageJob::succeeded);
        metrics::counter!("berth_preheat_jobs_total", "state" => if ok { "succeeded" } else { "failed" })
            .increment(1);
        self.state.send_replace(if ok { JobState::Succeeded } else { JobState::Failed });
    }

    /// Waits until the job has ended.
    pub(crate) async fn ended(&self) -> JobState {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| s.ended()).await;
        state.map(|s| *s).unwrap_or(JobState::Failed)
    }

    /// The job's status, with each item's tiers as found in the store now.
    pub(crate) fn status(&self, store: &Store) -> JobStatus {
        // The state first: `finish` sets the times before the state, so a final state read
        // here always comes with its finish time.
        let state = self.state();
        let (started, finished) = *self.times.lock().expect("job lock");
        let images: Vec<ImageStatus> = self.images.iter().map(|image| image.status(store)).collect();
        let items = || images.iter().flat_map(|i| &i.items);
        let (bytes_total, bytes_done) = (items().map(|i| i.size).sum(), items().map(|i| i.bytes_done).sum());
        JobStatus {
            id: self.id.clone(),
            state,
            created_at: rfc3339(Some(self.created)),
            started_at: rfc3339(started),
            finished_at: rfc3339(finished),
            platforms: self.platforms.clone(),
            tiers: self.tiers.clone(),
            pin: self.pin,
            bytes_total,
            bytes_done,
            images,
            scope: None,
            local_state: None,
            peers: None,
        }
    }
}

impl ImageJob {
    fn status(&self, store: &Store) -> ImageStatus {
        let resolved = self.resolved.lock().expect("image lock").clone();
        let (digest, media_type) = resolved.unzip();
        ImageStatus {
            reference: self.reference.clone(),
            digest,
            media_type,
            platforms: self.platforms.lock().expect("image lock").clone(),
            error: self.error.lock().expect("image lock").clone(),
            items: self.items().iter().map(|item| item.status(store)).collect(),
        }
    }
}

impl Item {
    fn status(&self, store: &Store) -> ItemStatus {
        let (state, error) = self.state.lock().expect("item lock").clone();
        let held = store.held(&self.digest);
        let mut tiers = Vec::new();
        if held.memory {
            tiers.push(TierName::Memory);
        }
        if held.disk {
            tiers.push(TierName::Disk);
        }
        if held.bucket {
            tiers.push(TierName::Bucket);
        }
        ItemStatus {
            digest: self.digest.clone(),
            size: self.size,
            kind: self.kind,
            platform: self.platform.clone(),
            state,
            bytes_done: self.done.load(Ordering::Relaxed),
            tiers,
            note: self.note.lock().expect("item lock").clone(),
            error,
        }
    }
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}
