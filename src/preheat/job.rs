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
pub struct Item {
    pub digest: Digest,
    pub size: u64,
    pub kind: ItemKind,
    pub platform: Option<String>,
    pub done: AtomicU64,
    state: Mutex<(ItemState, Option<String>)>,
    note: Mutex<Option<String>>,
}

impl Item {
    pub fn new(digest: Digest, size: u64, kind: ItemKind, platform: Option<String>) -> Arc<Item> {
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

    pub fn set(&self, state: ItemState, error: Option<String>) {
        *self.state.lock().expect("item lock") = (state, error);
    }

    pub fn state(&self) -> ItemState {
        self.state.lock().expect("item lock").0
    }

    pub fn note(&self, note: String) {
        *self.note.lock().expect("item lock") = Some(note);
    }
}

/// One image of a job.
pub struct ImageJob {
    /// The reference as normalised (`docker.io/library/alpine:3.20`).
    pub reference: String,
    pub resolved: Mutex<Option<(Digest, String)>>,
    pub platforms: Mutex<Vec<String>>,
    pub items: Mutex<Vec<Arc<Item>>>,
    pub error: Mutex<Option<String>>,
}

impl ImageJob {
    pub fn new(reference: String) -> ImageJob {
        ImageJob {
            reference,
            resolved: Mutex::new(None),
            platforms: Mutex::new(Vec::new()),
            items: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        }
    }

    pub fn push(&self, item: Arc<Item>) {
        self.items.lock().expect("image lock").push(item);
    }

    pub fn fail(&self, error: String) {
        self.error.lock().expect("image lock").get_or_insert(error);
    }

    pub fn items(&self) -> Vec<Arc<Item>> {
        self.items.lock().expect("image lock").clone()
    }

    /// Whether the image resolved and every item is cached.
    pub fn succeeded(&self) -> bool {
        self.error.lock().expect("image lock").is_none()
            && self.items().iter().all(|i| i.state() == ItemState::Cached)
    }
}

pub struct Job {
    pub id: String,
    pub images: Vec<ImageJob>,
    pub platforms: Vec<String>,
    pub tiers: Vec<TierName>,
    pub pin: bool,
    /// Peers were asked to preheat the same digests (`"scope": "cluster"`).
    pub cluster: bool,
    /// Their jobs, once asked.
    pub peer_jobs: Mutex<Vec<super::cluster::PeerJob>>,
    created: SystemTime,
    times: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    state: watch::Sender<JobState>,
}

impl Job {
    pub fn new(
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
            peer_jobs: Mutex::new(Vec::new()),
            created: SystemTime::now(),
            times: Mutex::new((None, None)),
            state: watch::channel(JobState::Queued).0,
        }
    }

    pub fn in_cluster(mut self, cluster: bool) -> Job {
        self.cluster = cluster;
        self
    }

    pub fn state(&self) -> JobState {
        *self.state.borrow()
    }

    pub fn start(&self) {
        self.times.lock().expect("job lock").0 = Some(SystemTime::now());
        self.state.send_replace(JobState::Running);
    }

    pub fn finish(&self) {
        self.times.lock().expect("job lock").1 = Some(SystemTime::now());
        let ok = self.images.iter().all(ImageJob::succeeded);
        metrics::counter!("berth_preheat_jobs_total", "state" => if ok { "succeeded" } else { "failed" })
            .increment(1);
        self.state.send_replace(if ok { JobState::Succeeded } else { JobState::Failed });
    }

    /// Waits until the job has ended.
    pub async fn ended(&self) -> JobState {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| s.ended()).await;
        state.map(|s| *s).unwrap_or(JobState::Failed)
    }

    /// The job's status, with each item's tiers as found in the store now.
    pub fn status(&self, store: &Store) -> JobStatus {
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
        let mut tiers = Vec::new();
        if store.memory.contains(&self.digest) {
            tiers.push(TierName::Memory);
        }
        if store.disk.len(&self.digest).ok().flatten().is_some() {
            tiers.push(TierName::Disk);
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
