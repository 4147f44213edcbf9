//! `"scope": "cluster"`: the receiving instance resolves the tags once, asks every peer to
//! preheat the same digests (`POST /berth/v1/preheat` on the peer's registry listener, as a
//! peer), and its status gathers theirs.

use http::{Method, StatusCode};
use serde::Serialize;

use super::job::Job;
use super::status::{Accepted, ErrorBody, JobState, JobStatus, PeerStatus};
use super::{PreheatRequest, Scope};
use crate::oci::image_ref::ImageRef;
use crate::source::peers::Peers;
use crate::source::upstream::{body_at_most, BodyError};

/// Where a peer's share of a cluster preheat runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PeerJob {
    pub(crate) peer: String,
    /// The peer's job id, when it took the job.
    pub(crate) id: Option<String>,
    /// Why it did not.
    pub(crate) error: Option<String>,
}

/// Why a peer's part of a cluster job is not known: it did not take the job, or its status
/// could not be read.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The peer refused the job, with the `error` of its answer (`?` when it gave none).
    #[error("answered {status}: {why}")]
    Refused { status: StatusCode, why: String },
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("unreadable answer: {0}")]
    Unreadable(#[source] serde_json::Error),
    #[error("answer cut: {0}")]
    Cut(#[source] crate::error::Error),
    #[error("answer over {MAX_PEER_ANSWER} bytes")]
    TooLarge,
    /// A job id that is not one berth makes (it goes into a URL path).
    #[error("answered a job id berth does not make: {0:?}")]
    BadId(String),
}

/// What a peer's answer about a job may take: a status is a few hundred bytes per item.
const MAX_PEER_ANSWER: u64 = 16 << 20;

/// A peer's answer, read whole up to `MAX_PEER_ANSWER`.
async fn answer_of(peer: &str, resp: reqwest::Response) -> Result<bytes::Bytes, PeerError> {
    match body_at_most(resp, MAX_PEER_ANSWER, peer).await {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge(_)) => Err(PeerError::TooLarge),
        Err(BodyError::Failed(e)) => Err(PeerError::Cut(e)),
    }
}

/// Whether `id` is a job id as berth makes them (`new_id`: 16 hex digits), allowing a little
/// more for other versions: 1 to 64 ASCII letters, digits or dashes.
fn is_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The job's images pinned to the digests they resolved to here.
fn resolved_images(job: &Job) -> Vec<String> {
    job.images
        .iter()
        .filter_map(|image| {
            let (digest, _) = image.resolved.lock().expect("image lock").clone()?;
            let r = ImageRef::parse(&image.reference).ok()?;
            Some(ImageRef { tag: None, digest: Some(digest), ..r }.to_string())
        })
        .collect()
}

/// Asks every peer to preheat the job's resolved images, by digest.
pub(crate) async fn fan_out(peers: &Peers, job: &Job) {
    let request = PreheatRequest {
        images: resolved_images(job),
        platforms: Some(job.platforms.clone()),
        tiers: Some(job.tiers.clone()),
        pin: job.pin,
        referrers: job.referrers,
        scope: Scope::Local,
    };
    let asks = peers.members().into_iter().map(|peer| {
        let request = &request;
        async move {
            if request.images.is_empty() {
                return PeerJob { peer, id: None, error: Some("no image resolved".into()) };
            }
            match ask(peers, &peer, request).await {
                Ok(id) => PeerJob { peer, id: Some(id), error: None },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "peer did not take its part of a cluster preheat");
                    PeerJob { peer, id: None, error: Some(e.to_string()) }
                }
            }
        }
    });
    let jobs = futures::future::join_all(asks).await;
    *job.peer_jobs.lock().expect("job lock") = jobs;
}

/// Asks one peer to run its part; its job id when it took it.
async fn ask(peers: &Peers, peer: &str, request: &PreheatRequest) -> Result<String, PeerError> {
    let sent = peers.request(Method::POST, peer, "/berth/v1/preheat").json(request).send().await;
    let resp = sent.map_err(PeerError::Unreachable)?;
    let status = resp.status();
    let body = answer_of(peer, resp).await?;
    if status == StatusCode::ACCEPTED {
        if let Ok(accepted) = serde_json::from_slice::<Accepted>(&body) {
            return match is_job_id(&accepted.id) {
                true => Ok(accepted.id),
                false => Err(PeerError::BadId(accepted.id.chars().take(80).collect())),
            };
        }
    }
    let why = serde_json::from_slice::<ErrorBody>(&body).map_or_else(|_| "?".to_owned(), |b| b.error);
    let why = why.chars().take(200).collect();
    Err(PeerError::Refused { status, why })
}

/// A peer's job status.
async fn status_of(peers: &Peers, peer: &str, id: &str) -> Result<JobStatus, PeerError> {
    let got = peers.request(Method::GET, peer, &format!("/berth/v1/preheat/{id}")).send().await;
    let resp = got.map_err(PeerError::Unreachable)?;
    if !resp.status().is_success() {
        return Err(PeerError::Status(resp.status()));
    }
    serde_json::from_slice(&answer_of(peer, resp).await?).map_err(PeerError::Unreadable)
}

/// Each peer's part as it stands now: its state and byte counts, or why it is unknown.
pub(crate) async fn statuses(peers: &Peers, job: &Job) -> Vec<PeerStatus> {
    let jobs = job.peer_jobs.lock().expect("job lock").clone();
    let asks = jobs.into_iter().map(|pj| async move {
        let Some(id) = pj.id else {
            return PeerStatus::failed(pj.peer, None, pj.error);
        };
        match status_of(peers, &pj.peer, &id).await {
            Ok(status) => PeerStatus::of(pj.peer, id, &status),
            Err(e) => PeerStatus::failed(pj.peer, Some(id), Some(e.to_string())),
        }
    });
    futures::future::join_all(asks).await
}

/// A cluster job's status: this instance's part (`local_state`), each peer's, and the state
/// of the whole.
pub(crate) async fn gather(peers: &Peers, job: &Job, mut status: JobStatus) -> JobStatus {
    let parts = statuses(peers, job).await;
    status.scope = Some(Scope::Cluster);
    status.local_state = Some(status.state);
    status.state = aggregate(status.state, &parts);
    status.peers = Some(parts);
    status
}

/// The state of a cluster job: running while any part runs, succeeded when all did.
pub(crate) fn aggregate(local: JobState, peers: &[PeerStatus]) -> JobState {
    let states: Vec<JobState> = std::iter::once(local).chain(peers.iter().map(|p| p.state)).collect();
    if states.iter().any(|s| !s.ended()) {
        JobState::Running
    } else if states.iter().all(|s| *s == JobState::Succeeded) {
        JobState::Succeeded
    } else {
        JobState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_job_ids_as_berth_makes_them_go_into_a_peer_url() {
        assert!(is_job_id("0123456789abcdef") && is_job_id("a-1"));
        for bad in ["", "../../v2/x", "a/b", "a?b=c", "a#b", "a b", "ä", &"a".repeat(65)] {
            assert!(!is_job_id(bad), "{bad:?} accepted");
        }
    }

    fn part(state: JobState) -> PeerStatus {
        PeerStatus { state, ..PeerStatus::failed("p".into(), None, None) }
    }

    #[test]
    fn a_cluster_job_runs_while_any_part_runs_and_succeeds_when_all_did() {
        use JobState::*;
        assert_eq!(aggregate(Succeeded, &[part(Queued), part(Failed)]), Running);
        assert_eq!(aggregate(Running, &[part(Succeeded)]), Running);
        assert_eq!(aggregate(Succeeded, &[part(Succeeded), part(Succeeded)]), Succeeded);
        assert_eq!(aggregate(Succeeded, &[part(Failed)]), Failed);
        assert_eq!(aggregate(Failed, &[]), Failed);
    }
}
