//! `"scope": "cluster"`: the receiving instance resolves the tags once, asks every peer to
//! preheat the same digests (`POST /berth/v1/preheat` on the peer's registry listener, as a
//! peer), and its status gathers theirs.

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::job::Job;
use crate::oci::image_ref::ImageRef;
use crate::source::peers::Peers;

/// Where a peer's share of a cluster preheat runs.
#[derive(Clone, Debug, Serialize)]
pub struct PeerJob {
    pub peer: String,
    /// The peer's job id, when it took the job.
    pub id: Option<String>,
    /// Why it did not.
    pub error: Option<String>,
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
pub async fn fan_out(peers: &Peers, job: &Job) {
    let images = resolved_images(job);
    let body = json!({ "images": images, "platforms": job.platforms, "tiers": job.tiers, "pin": job.pin });
    let asks = peers.members().into_iter().map(|peer| {
        let (body, images) = (&body, &images);
        async move {
            if images.is_empty() {
                return PeerJob { peer, id: None, error: Some("no image resolved".into()) };
            }
            let sent = peers.request(Method::POST, &peer, "/berth/v1/preheat").json(body).send().await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let answer: Value = resp.json().await.unwrap_or(Value::Null);
                    match answer["id"].as_str() {
                        Some(id) if status == StatusCode::ACCEPTED => Ok(id.to_owned()),
                        _ => Err(format!("answered {status}: {}", answer["error"].as_str().unwrap_or("?"))),
                    }
                }
                Err(e) => Err(format!("unreachable: {e}")),
            };
            if let Err(e) = &answer {
                tracing::warn!(%peer, error = %e, "peer did not take its part of a cluster preheat");
            }
            let (id, error) = match answer {
                Ok(id) => (Some(id), None),
                Err(e) => (None, Some(e)),
            };
            PeerJob { peer, id, error }
        }
    });
    let jobs = futures::future::join_all(asks).await;
    *job.peer_jobs.lock().expect("job lock") = jobs;
}

/// Each peer's part as it stands now: its state and byte counts, or why it is unknown.
pub async fn statuses(peers: &Peers, job: &Job) -> Vec<Value> {
    let jobs = job.peer_jobs.lock().expect("job lock").clone();
    let asks = jobs.into_iter().map(|pj| async move {
        let Some(id) = &pj.id else {
            return json!({ "peer": pj.peer, "state": "failed", "error": pj.error });
        };
        let got = peers.request(Method::GET, &pj.peer, &format!("/berth/v1/preheat/{id}")).send().await;
        let status: Result<Value, String> = match got {
            Ok(resp) if resp.status().is_success() => resp.json().await.map_err(|e| e.to_string()),
            Ok(resp) => Err(format!("answered {}", resp.status())),
            Err(e) => Err(format!("unreachable: {e}")),
        };
        match status {
            Ok(s) => {
                let items: Vec<&Value> = s["images"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|i| i["items"].as_array())
                    .flatten()
                    .collect();
                json!({
                    "peer": pj.peer,
                    "id": id,
                    "state": s["state"],
                    "bytes_total": s["bytes_total"],
                    "bytes_done": s["bytes_done"],
                    "items": items.len(),
                    "items_cached": items.iter().filter(|i| i["state"] == "cached").count(),
                    "errors": s["images"].as_array().into_iter().flatten()
                        .filter_map(|i| i["error"].as_str()).collect::<Vec<_>>(),
                })
            }
            Err(e) => json!({ "peer": pj.peer, "id": id, "state": "failed", "error": e }),
        }
    });
    futures::future::join_all(asks).await
}

/// The state of a cluster job: running while any part runs, succeeded when all did.
pub fn aggregate(local: &Value, peers: &[Value]) -> &'static str {
    let states = std::iter::once(&local["state"]).chain(peers.iter().map(|p| &p["state"]));
    let states: Vec<&str> = states.map(|s| s.as_str().unwrap_or("failed")).collect();
    if states.iter().any(|s| *s == "queued" || *s == "running") {
        "running"
    } else if states.iter().all(|s| *s == "succeeded") {
        "succeeded"
    } else {
        "failed"
    }
}
