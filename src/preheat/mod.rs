//! Preheat: resolve images to digests through the same tag cache and fills that pulls use, and
//! warm the tiers before the pulls come. A job's status is read from the tiers.

pub(crate) mod cluster;
pub(crate) mod job;
mod plan;
pub(crate) mod status;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Preheat as PreheatConfig;
use crate::error::Error;
use crate::oci::image_ref::ImageRef;
use crate::oci::platform::Platform;
use crate::oci::Invalid;
use crate::registry::{Mirror, Via, Want};

use job::{ImageJob, Item, Job};
use status::{ItemKind, ItemState, TierName};

/// Jobs kept for `GET /api/v1/preheat`; older ones are forgotten.
const HISTORY: usize = 100;

/// `POST /api/v1/preheat` (and, from a cluster job to its peers, `/berth/v1/preheat`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreheatRequest {
    pub(crate) images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platforms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tiers: Option<Vec<TierName>>,
    #[serde(default)]
    pub(crate) pin: bool,
    /// Also warm each image's signatures and attestations: what its referrers answers list,
    /// and the tag schema's `sha256-<hex>.sig`, `.att` and `.sbom`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) referrers: bool,
    /// `cluster`: also ask every peer to preheat the same digests.
    #[serde(default, skip_serializing_if = "Scope::is_local")]
    pub(crate) scope: Scope,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    #[default]
    Local,
    Cluster,
}

impl Scope {
    fn is_local(&self) -> bool {
        *self == Scope::Local
    }
}

/// Why a preheat request was refused (the client's fault: 400).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("\"images\" is empty")]
    NoImages,
    #[error("\"platforms\" is empty")]
    NoPlatforms,
    /// An image reference or a platform that does not parse.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// An image of a registry this instance does not mirror.
    #[error("{image}: {source}")]
    NotMirrored {
        image: String,
        #[source]
        source: Error,
    },
    #[error("\"scope\": \"cluster\" needs [peers] in the configuration")]
    NoPeers,
    #[error("\"tiers\": [\"bucket\"] needs [bucket] in the configuration, with upload = \"background\"")]
    NoBucket,
}

/// Why one blob of a job was not cached.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Mirror(#[from] Error),
    #[error("transfer failed: {0}")]
    Transfer(#[source] std::io::Error),
    #[error("fetched and verified, but not stored on disk (see the log)")]
    NotStored,
}

pub(crate) struct Preheater {
    mirror: Arc<Mirror>,
    config: PreheatConfig,
    fetches: Arc<Semaphore>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Preheater {
    pub(crate) fn new(mirror: Arc<Mirror>, config: PreheatConfig) -> Preheater {
        let fetches = Arc::new(Semaphore::new(config.concurrency));
        Preheater { mirror, config, fetches, jobs: Mutex::new(VecDeque::new()) }
    }

    /// Checks a request and starts its job. Errors are the client's (400).
    pub(crate) fn submit(self: &Arc<Self>, req: PreheatRequest) -> Result<Arc<Job>, SubmitError> {
        if req.images.is_empty() {
            return Err(SubmitError::NoImages);
        }
        let mut refs = Vec::new();
        for image in &req.images {
            let r = ImageRef::parse(image)?;
            if let Err(source) = self.mirror.upstream(Some(&r.host)) {
                return Err(SubmitError::NotMirrored { image: r.to_string(), source });
            }
            refs.push(r);
        }
        let platforms = req.platforms.unwrap_or_else(|| self.config.platforms.clone());
        for p in &platforms {
            Platform::parse(p)?;
        }
        if platforms.is_empty() {
            return Err(SubmitError::NoPlatforms);
        }
        let tiers = req.tiers.unwrap_or_else(|| vec![TierName::Memory, TierName::Disk]);
        if tiers.contains(&TierName::Bucket) && !self.mirror.store().uploads_to_bucket() {
            return Err(SubmitError::NoBucket);
        }
        let cluster = req.scope == Scope::Cluster;
        if cluster && self.mirror.peers().is_none() {
            return Err(SubmitError::NoPeers);
        }
        let images = refs.iter().map(|r| ImageJob::new(r.to_string())).collect();
        let job = Arc::new(
            Job::new(new_id(), images, platforms, tiers, req.pin)
                .in_cluster(cluster)
                .with_referrers(req.referrers),
        );
        {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.push_back(job.clone());
            while jobs.len() > HISTORY {
                jobs.pop_front();
            }
        }
        let this = self.clone();
        let running = job.clone();
        tokio::spawn(async move { this.run(running, refs).await });
        Ok(job)
    }

    pub(crate) fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().expect("jobs lock").iter().find(|j| j.id == id).cloned()
    }

    /// Recent jobs, newest first.
    pub(crate) fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().expect("jobs lock").iter().rev().cloned().collect()
    }

    async fn run(self: Arc<Self>, job: Arc<Job>, refs: Vec<ImageRef>) {
        job.start();
        let (mirror, platforms, referrers) = (&self.mirror, &job.platforms, job.referrers);
        let resolved = refs.iter().zip(&job.images).map(|(r, image)| async move {
            if let Err(e) = plan::resolve(mirror, r, platforms, image, referrers).await {
                image.fail(e.to_string());
            }
        });
        futures::future::join_all(resolved).await;
        // Peers preheat the digests resolved here, at the same time as this instance; each
        // blob's owner fetches it from upstream once for all.
        if let Some(peers) = self.mirror.peers().filter(|_| job.cluster) {
            cluster::fan_out(peers, &job).await;
        }
        let images = refs.iter().zip(&job.images).map(|(r, image)| self.run_image(&job, r, image));
        futures::future::join_all(images).await;
        job.finish();
        tracing::info!(job = %job.id, state = ?job.state(), "preheat finished");
    }

    async fn run_image(&self, job: &Job, r: &ImageRef, image: &ImageJob) {
        let blobs: Vec<Arc<Item>> =
            image.items().into_iter().filter(|i| i.state() != ItemState::Cached).collect();
        let fetches = blobs.iter().map(|item| self.fetch(job, r, item));
        futures::future::join_all(fetches).await;
        if job.tiers.contains(&TierName::Bucket) {
            // Manifests and indexes were fetched while resolving: uploaded here, so that the
            // job's answer says what the bucket holds of them too.
            let manifests =
                image.items().into_iter().filter(|i| matches!(i.kind, ItemKind::Manifest | ItemKind::Index));
            futures::future::join_all(manifests.map(|item| self.manifest_to_bucket(r, item))).await;
        }
        if job.pin && image.succeeded() {
            self.pin(image).await;
        }
    }

    /// Fetches one blob through the pull path, then places it in memory when asked.
    async fn fetch(&self, job: &Job, r: &ImageRef, item: &Item) {
        let Ok(_permit) = self.fetches.acquire().await else { return };
        item.set(ItemState::Fetching, None);
        match self.pull(r, item).await {
            Ok(()) => item.set(ItemState::Cached, None),
            Err(e) => {
                item.set(ItemState::Failed, Some(e.to_string()));
                return;
            }
        }
        if job.tiers.contains(&TierName::Memory) {
            self.to_memory(item).await;
        }
        if job.tiers.contains(&TierName::Bucket)
            && !self.mirror.store().upload_blob_now(&item.digest, &r.host).await
        {
            item.set(
                ItemState::Failed,
                Some("cached here, but not uploaded to the bucket (see the log)".into()),
            );
        }
    }

    async fn manifest_to_bucket(&self, r: &ImageRef, item: Arc<Item>) {
        if !self.mirror.store().upload_manifest_now(&item.digest, &r.host).await {
            item.set(
                ItemState::Failed,
                Some("cached here, but not uploaded to the bucket (see the log)".into()),
            );
        }
    }

    async fn pull(&self, r: &ImageRef, item: &Item) -> Result<(), FetchError> {
        let answer =
            self.mirror.blob(Some(&r.host), &r.repo, &item.digest, None, Want::Content, Via::Client).await?;
        for mut s in answer.bodies {
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(FetchError::Transfer)?;
                item.done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        // The last byte reaches clients before the fill is on disk: wait for it to land.
        let store = self.mirror.store();
        if let Some(fill) = store.inflight(&item.digest) {
            fill.settled().await;
        }
        if !store.held(&item.digest).disk {
            return Err(FetchError::NotStored);
        }
        Ok(())
    }

    /// Puts a cached blob in the memory tier, also above `memory_max_object`, if it fits.
    async fn to_memory(&self, item: &Item) {
        if let Err(why) = self.mirror.store().copy_to_memory(&item.digest, item.size).await {
            item.note(why.to_string());
        }
    }

    async fn pin(&self, image: &ImageJob) {
        let Some((digest, _)) = image.resolved.lock().expect("image lock").clone() else { return };
        if let Err(e) = self.mirror.pins().record(&image.reference, &digest).await {
            tracing::warn!(image = %image.reference, error = %e, "could not record a pin");
            image.fail("could not record the pin".into());
        }
    }
}

fn new_id() -> String {
    use std::sync::atomic::AtomicU64;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    crate::oci::digest::Digest::of(format!("{nanos}-{seq}-{}", std::process::id()).as_bytes()).hex()[..16]
        .to_owned()
}
