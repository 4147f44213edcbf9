//! A preheat job's state, and its status as JSON. The `tiers` of every item are read from the
//! tiers when the status is built, never remembered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::oci::digest::Digest;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    Memory,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    Pending,
    Fetching,
    Cached,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Index,
    Manifest,
    Config,
    Layer,
}

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
        let state = rx.wait_for(|s| matches!(s, JobState::Succeeded | JobState::Failed)).await;
        state.map(|s| *s).unwrap_or(JobState::Failed)
    }

    /// The job's status, with each item's tiers as found in the store now.
    pub fn status(&self, store: &Store) -> Value {
        // The state first: `finish` sets the times before the state, so a final state read
        // here always comes with its finish time.
        let state = self.state();
        let (started, finished) = *self.times.lock().expect("job lock");
        let (mut total, mut done) = (0u64, 0u64);
        let images: Vec<Value> = self
            .images
            .iter()
            .map(|image| {
                let items: Vec<Value> = image
                    .items()
                    .iter()
                    .map(|item| {
                        let (state, error) = item.state.lock().expect("item lock").clone();
                        let bytes_done = item.done.load(Ordering::Relaxed);
                        total += item.size;
                        done += bytes_done;
                        let mut tiers = Vec::new();
                        if store.memory.contains(&item.digest) {
                            tiers.push(TierName::Memory);
                        }
                        if store.disk.len(&item.digest).ok().flatten().is_some() {
                            tiers.push(TierName::Disk);
                        }
                        json!({
                            "digest": item.digest.as_str(),
                            "size": item.size,
                            "kind": item.kind,
                            "platform": item.platform,
                            "state": state,
                            "bytes_done": bytes_done,
                            "tiers": tiers,
                            "note": *item.note.lock().expect("item lock"),
                            "error": error,
                        })
                    })
                    .collect();
                let resolved = image.resolved.lock().expect("image lock").clone();
                json!({
                    "reference": image.reference,
                    "digest": resolved.as_ref().map(|(d, _)| d.as_str().to_owned()),
                    "media_type": resolved.map(|(_, m)| m),
                    "platforms": *image.platforms.lock().expect("image lock"),
                    "error": *image.error.lock().expect("image lock"),
                    "items": items,
                })
            })
            .collect();
        json!({
            "id": self.id,
            "state": state,
            "created_at": rfc3339(Some(self.created)),
            "started_at": rfc3339(started),
            "finished_at": rfc3339(finished),
            "platforms": self.platforms,
            "tiers": self.tiers,
            "pin": self.pin,
            "bytes_total": total,
            "bytes_done": done,
            "images": images,
        })
    }
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}
