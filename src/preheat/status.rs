//! A preheat job's status: the one shape the admin API and the peer API answer, that a cluster
//! job reads back from its peers, and that `berth preheat` reads. Readers ignore fields they do
//! not know, so that a newer peer may add some; a state, kind or tier name they do not know
//! fails the read (a cluster job then counts that peer's part as failed).

use serde::{Deserialize, Serialize};

use super::Scope;
use crate::oci::digest::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TierName {
    Memory,
    Disk,
    /// The shared bucket (`[bucket]`): the blob is known to be uploaded there.
    Bucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    /// Whether the job has ended (succeeded or failed).
    pub(crate) fn ended(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ItemState {
    Pending,
    Fetching,
    Cached,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ItemKind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl ItemKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ItemKind::Index => "index",
            ItemKind::Manifest => "manifest",
            ItemKind::Config => "config",
            ItemKind::Layer => "layer",
        }
    }
}

/// `GET /api/v1/preheat/<id>` (and `/berth/v1/preheat/<id>` on the peer API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobStatus {
    pub(crate) id: String,
    /// For a cluster job, the state of the whole: running while any part runs.
    pub(crate) state: JobState,
    /// RFC 3339 times, with milliseconds.
    pub(crate) created_at: Option<String>,
    pub(crate) started_at: Option<String>,
    pub(crate) finished_at: Option<String>,
    pub(crate) platforms: Vec<String>,
    pub(crate) tiers: Vec<TierName>,
    pub(crate) pin: bool,
    pub(crate) bytes_total: u64,
    pub(crate) bytes_done: u64,
    pub(crate) images: Vec<ImageStatus>,
    /// `cluster` for a cluster job; absent otherwise, as are the two fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<Scope>,
    /// This instance's part of a cluster job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) local_state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) peers: Option<Vec<PeerStatus>>,
}

impl JobStatus {
    /// Every item of every image.
    pub(crate) fn items(&self) -> impl Iterator<Item = &ItemStatus> {
        self.images.iter().flat_map(|i| &i.items)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageStatus {
    /// The reference as normalised (`docker.io/library/alpine:3.20`).
    pub(crate) reference: String,
    /// What the reference resolved to, once it did.
    pub(crate) digest: Option<Digest>,
    pub(crate) media_type: Option<String>,
    /// The platforms chosen from an index, as the index names them.
    pub(crate) platforms: Vec<String>,
    pub(crate) error: Option<String>,
    pub(crate) items: Vec<ItemStatus>,
}

impl ImageStatus {
    pub(crate) fn count(&self, f: impl Fn(&ItemStatus) -> bool) -> usize {
        self.items.iter().filter(|i| f(i)).count()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ItemStatus {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) kind: ItemKind,
    pub(crate) platform: Option<String>,
    pub(crate) state: ItemState,
    pub(crate) bytes_done: u64,
    /// The tiers that hold the item when the status was built.
    pub(crate) tiers: Vec<TierName>,
    pub(crate) note: Option<String>,
    pub(crate) error: Option<String>,
}

/// A peer's part of a cluster job. A part that could not be read has only `peer`, `id` (when
/// the peer took the job), `state` (`failed`) and `error`; a part read has the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PeerStatus {
    pub(crate) peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    pub(crate) state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bytes_done: Option<u64>,
    /// How many items the peer's job has, and how many of them are cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) items_cached: Option<usize>,
    /// The errors of the peer's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) errors: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl PeerStatus {
    /// The part of a peer whose job status was read.
    pub(crate) fn of(peer: String, id: String, status: &JobStatus) -> PeerStatus {
        PeerStatus {
            peer,
            id: Some(id),
            state: status.state,
            bytes_total: Some(status.bytes_total),
            bytes_done: Some(status.bytes_done),
            items: Some(status.items().count()),
            items_cached: Some(status.items().filter(|i| i.state == ItemState::Cached).count()),
            errors: Some(status.images.iter().filter_map(|i| i.error.clone()).collect()),
            error: None,
        }
    }

    /// The part of a peer that did not take the job, or whose status could not be read.
    pub(crate) fn failed(peer: String, id: Option<String>, error: Option<String>) -> PeerStatus {
        PeerStatus {
            peer,
            id,
            state: JobState::Failed,
            bytes_total: None,
            bytes_done: None,
            items: None,
            items_cached: None,
            errors: None,
            error,
        }
    }
}

/// The answer to an accepted preheat request (`status_url` on the admin API only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Accepted {
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status_url: Option<String>,
}

/// The body of an error of the admin API and of the peer API's preheat routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item() -> ItemStatus {
        ItemStatus {
            digest: Digest::of(b"layer"),
            size: 5,
            kind: ItemKind::Layer,
            platform: None,
            state: ItemState::Cached,
            bytes_done: 5,
            tiers: vec![TierName::Disk],
            note: None,
            error: None,
        }
    }

    fn job() -> JobStatus {
        JobStatus {
            id: "j".into(),
            state: JobState::Succeeded,
            created_at: Some("2026-01-01T00:00:00.000Z".into()),
            started_at: None,
            finished_at: None,
            platforms: vec!["linux/amd64".into()],
            tiers: vec![TierName::Memory, TierName::Disk],
            pin: false,
            bytes_total: 5,
            bytes_done: 5,
            images: vec![ImageStatus {
                reference: "docker.io/library/a:1".into(),
                digest: None,
                media_type: None,
                platforms: vec![],
                error: None,
                items: vec![item()],
            }],
            scope: None,
            local_state: None,
            peers: None,
        }
    }

    #[test]
    fn a_local_status_has_every_field_with_nulls_and_no_cluster_fields() {
        let v = serde_json::to_value(job()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let expected = [
            "bytes_done",
            "bytes_total",
            "created_at",
            "finished_at",
            "id",
            "images",
            "pin",
            "platforms",
            "started_at",
            "state",
            "tiers",
        ];
        assert_eq!(keys, expected);
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["tiers"], json!(["memory", "disk"]));
        assert_eq!(v["images"][0]["digest"], json!(null));
        let item = &v["images"][0]["items"][0];
        assert_eq!(item["kind"], "layer");
        assert_eq!(item["state"], "cached");
        assert_eq!(item["note"], json!(null));
        assert_eq!(item["digest"], Digest::of(b"layer").as_str());
    }

    #[test]
    fn a_cluster_status_adds_scope_local_state_and_peers() {
        let mut status = job();
        status.scope = Some(Scope::Cluster);
        status.local_state = Some(JobState::Running);
        status.peers = Some(vec![PeerStatus::failed("http://p".into(), None, Some("unreachable".into()))]);
        let v = serde_json::to_value(status).unwrap();
        assert_eq!(v["scope"], "cluster");
        assert_eq!(v["local_state"], "running");
        assert_eq!(v["peers"][0], json!({"peer": "http://p", "state": "failed", "error": "unreachable"}));
        let read = PeerStatus::of("http://q".into(), "i".into(), &job());
        let v = serde_json::to_value(read).unwrap();
        let expected = json!({"peer": "http://q", "id": "i", "state": "succeeded", "bytes_total": 5,
            "bytes_done": 5, "items": 1, "items_cached": 1, "errors": []});
        assert_eq!(v, expected);
    }

    #[test]
    fn a_status_reads_back_and_fields_it_does_not_know_are_ignored() {
        let mut v = serde_json::to_value(job()).unwrap();
        v["added_later"] = json!(1);
        v["images"][0]["items"][0]["added_later"] = json!({"x": 1});
        let read: JobStatus = serde_json::from_value(v).unwrap();
        assert_eq!(read.items().count(), 1);
        assert_eq!(read.state, JobState::Succeeded);
        assert!(read.peers.is_none());
    }
}
