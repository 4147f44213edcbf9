//! The admin listener: health, preheat jobs, the cache's contents, GC passes and pins.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::admin_error::AdminError;
use crate::config::Secret;
use crate::oci::accept::AcceptClass;
use crate::oci::image_ref::ImageRef;
use crate::preheat::cluster;
use crate::preheat::job::Job;
use crate::preheat::status::{Accepted, JobState, JobStatus};
use crate::preheat::{PreheatRequest, Preheater};
use crate::registry::{Mirror, Via, Want};

#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) mirror: Arc<Mirror>,
    pub(crate) preheater: Arc<Preheater>,
}

/// The admin routes; with a token, every route but `/healthz` requires
/// `Authorization: Bearer <token>`.
pub(crate) fn router(admin: Admin, token: Option<Secret>) -> Router {
    let guarded = Router::new()
        .route("/api/v1/preheat", get(list).post(submit))
        .route("/api/v1/preheat/{id}", get(status))
        .route("/api/v1/cache", get(cache))
        .route("/api/v1/gc", post(gc))
        .route("/api/v1/pins", get(pins).post(pin).delete(unpin))
        .route("/api/v1/peers", get(peers))
        .route("/metrics", get(metrics_text))
        .with_state(admin)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    if let Some(token) = token {
                        let presented = req
                            .headers()
                            .get(axum::http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "));
                        if !presented.is_some_and(|p| token.matches(p.as_bytes())) {
                            return AdminError::Unauthorized.into_response();
                        }
                    }
                    next.run(req).await
                }
            },
        ));
    Router::new().route("/healthz", get(|| async { "ok\n" })).merge(guarded)
}

/// A request body as the route's type; `what` names the request in a refusal.
pub(super) fn body_of<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|source| AdminError::Unreadable { what, source })
}

pub(super) async fn status_of(a: &Admin, job: Arc<Job>) -> Result<JobStatus, AdminError> {
    let store = a.mirror.store().clone();
    // Reading the tiers stats files: off the async workers.
    let local = job.clone();
    let status = tokio::task::spawn_blocking(move || local.status(&store))
        .await
        .map_err(|e| AdminError::internal("status failed", e))?;
    Ok(match a.mirror.peers().filter(|_| job.cluster) {
        Some(peers) => cluster::gather(peers, &job, status).await,
        None => status,
    })
}

/// The status once the job, and with `cluster` scope every peer's part, has ended.
async fn final_status(a: &Admin, job: Arc<Job>) -> Result<JobStatus, AdminError> {
    job.ended().await;
    loop {
        let status = status_of(a, job.clone()).await?;
        if status.state != JobState::Running {
            return Ok(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `POST /api/v1/preheat[?wait=true]`
async fn submit(
    State(a): State<Admin>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req: PreheatRequest = body_of("preheat", &body)?;
    let job = a.preheater.submit(req)?;
    if q.get("wait").is_some_and(|w| w == "true" || w == "1") {
        let status = final_status(&a, job).await?;
        let code = if status.state == JobState::Succeeded { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
        return Ok((code, Json(status)).into_response());
    }
    let accepted = Accepted { id: job.id.clone(), status_url: Some(format!("/api/v1/preheat/{}", job.id)) };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// `GET /api/v1/preheat/<id>`
async fn status(State(a): State<Admin>, Path(id): Path<String>) -> Result<Json<JobStatus>, AdminError> {
    let job = a.preheater.job(&id).ok_or(AdminError::NoJob(id))?;
    Ok(Json(status_of(&a, job).await?))
}

/// `GET /api/v1/preheat`: recent jobs, newest first.
async fn list(State(a): State<Admin>) -> Response {
    let jobs: Vec<_> = a
        .preheater
        .jobs()
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "state": j.state(),
                "images": j.images.iter().map(|i| i.reference.clone()).collect::<Vec<_>>(),
                "status_url": format!("/api/v1/preheat/{}", j.id),
            })
        })
        .collect();
    Json(json!({ "jobs": jobs })).into_response()
}

/// `GET /api/v1/peers[?digest=sha256:...]`: peers, their health and ownership shares; with a
/// digest, which instance owns it now.
async fn peers(
    State(a): State<Admin>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let peers = a.mirror.peers().ok_or(AdminError::NoPeers)?;
    let mut status = peers.status();
    if let Some(d) = q.get("digest") {
        let d = crate::oci::digest::Digest::parse(d)?;
        status["owner"] = json!(peers.owner(&d).unwrap_or_else(|| peers.me().to_owned()));
    }
    Ok(Json(status))
}

/// `GET /metrics`: Prometheus text.
async fn metrics_text(State(a): State<Admin>) -> Response {
    let text = super::metrics::render(&a.mirror);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /api/v1/cache`: image versions on disk, newest pull first, and totals vs capacity.
async fn cache(State(a): State<Admin>) -> Result<Json<serde_json::Value>, AdminError> {
    let images = a.mirror.collector().images().await.map_err(AdminError::Store)?;
    let usage = a.mirror.store().usage();
    Ok(Json(json!({
        "images": images,
        "disk": { "used": usage.disk.used, "capacity": usage.disk.capacity },
        "served_uncached": a.mirror.store().uncached(),
        "memory": { "used": usage.memory.used, "capacity": usage.memory.capacity },
        "bucket": a.mirror.store().bucket().map(|b| b.status()),
    })))
}

/// `POST /api/v1/gc`: a pass now, down to the low watermark; answers what it freed and why.
async fn gc(State(a): State<Admin>) -> Result<Response, AdminError> {
    let gc = a.mirror.collector();
    let report = gc.collect(gc.low_target()).await.map_err(AdminError::Store)?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    image: String,
}

/// The image of a pin request.
fn pin_request(body: &[u8]) -> Result<ImageRef, AdminError> {
    let req: PinRequest = body_of("pin", body)?;
    Ok(ImageRef::parse(&req.image)?)
}

/// `GET /api/v1/pins`
async fn pins(State(a): State<Admin>) -> Result<Json<serde_json::Value>, AdminError> {
    let pins = a.mirror.pins().recorded().await.map_err(|e| AdminError::internal("cannot read pins", e))?;
    let pins: Vec<_> =
        pins.into_iter().map(|(image, p)| json!({"image": image, "digest": p.digest})).collect();
    Ok(Json(json!({ "pins": pins })))
}

/// `POST /api/v1/pins {"image": "alpine:3.20"}`: resolves the image now and pins it.
async fn pin(State(a): State<Admin>, body: Bytes) -> Result<Json<serde_json::Value>, AdminError> {
    let r = pin_request(&body)?;
    let resolved = a
        .mirror
        .manifest(Some(&r.host), &r.repo, &r.reference(), &AcceptClass::pull(), Want::Head, Via::Client)
        .await;
    let digest = resolved.map_err(|source| AdminError::Unresolved { image: r.to_string(), source })?.digest;
    let pinned = a.mirror.pins().record(&r.to_string(), &digest).await;
    pinned.map_err(|e| AdminError::internal("cannot record the pin", e))?;
    Ok(Json(json!({ "image": r.to_string(), "digest": digest.as_str() })))
}

/// `DELETE /api/v1/pins {"image": "alpine:3.20"}`
async fn unpin(State(a): State<Admin>, body: Bytes) -> Result<Json<serde_json::Value>, AdminError> {
    let r = pin_request(&body)?;
    let removed = a.mirror.pins().remove(&r.to_string()).await;
    if !removed.map_err(|e| AdminError::internal("cannot remove the pin", e))? {
        return Err(AdminError::NotPinned(r));
    }
    Ok(Json(json!({ "image": r.to_string(), "unpinned": true })))
}
