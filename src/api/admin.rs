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

use crate::config::Secret;
use crate::oci::accept::AcceptClass;
use crate::oci::image_ref::ImageRef;
use crate::preheat::cluster;
use crate::preheat::job::Job;
use crate::preheat::{PreheatRequest, Preheater};
use crate::registry::{Mirror, Via, Want};
use crate::store::meta::{now_secs, Pin};

#[derive(Clone)]
pub struct Admin {
    pub mirror: Arc<Mirror>,
    pub preheater: Arc<Preheater>,
}

/// The admin routes; with a token, every route but `/healthz` requires
/// `Authorization: Bearer <token>`.
pub fn router(admin: Admin, token: Option<Secret>) -> Router {
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
                            return error(
                                StatusCode::UNAUTHORIZED,
                                "the admin API needs Authorization: Bearer <admin token>",
                            );
                        }
                    }
                    next.run(req).await
                }
            },
        ));
    Router::new().route("/healthz", get(|| async { "ok\n" })).merge(guarded)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(super) async fn status_of(a: &Admin, job: Arc<Job>) -> serde_json::Value {
    let store = a.mirror.store.clone();
    // Reading the tiers stats files: off the async workers.
    let local = job.clone();
    let mut status = tokio::task::spawn_blocking(move || local.status(&store))
        .await
        .unwrap_or_else(|e| json!({ "error": format!("status failed: {e}") }));
    if let Some(peers) = a.mirror.peers.as_ref().filter(|_| job.cluster) {
        let parts = cluster::statuses(peers, &job).await;
        status["scope"] = json!("cluster");
        status["local_state"] = status["state"].clone();
        status["state"] = json!(cluster::aggregate(&status, &parts));
        status["peers"] = json!(parts);
    }
    status
}

/// The status once the job, and with `cluster` scope every peer's part, has ended.
async fn final_status(a: &Admin, job: Arc<Job>) -> serde_json::Value {
    job.ended().await;
    loop {
        let status = status_of(a, job.clone()).await;
        if status["state"] != "running" {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `POST /api/v1/preheat[?wait=true]`
async fn submit(State(a): State<Admin>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let req: PreheatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid preheat request: {e}")),
    };
    let job = match a.preheater.submit(req) {
        Ok(job) => job,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if q.get("wait").is_some_and(|w| w == "true" || w == "1") {
        let status = final_status(&a, job).await;
        let code = if status["state"] == "succeeded" { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
        return (code, Json(status)).into_response();
    }
    let body = json!({ "id": job.id, "status_url": format!("/api/v1/preheat/{}", job.id) });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `GET /api/v1/preheat/<id>`
async fn status(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    match a.preheater.job(&id) {
        Some(job) => Json(status_of(&a, job).await).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no preheat job {id:?}")),
    }
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
async fn peers(State(a): State<Admin>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(peers) = &a.mirror.peers else {
        return error(StatusCode::NOT_FOUND, "no [peers] configured: this instance works alone");
    };
    let mut status = peers.status();
    if let Some(d) = q.get("digest") {
        match crate::oci::digest::Digest::parse(d) {
            Ok(d) => status["owner"] = json!(peers.owner(&d).unwrap_or_else(|| peers.me().to_owned())),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    Json(status).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics_text(State(a): State<Admin>) -> Response {
    let text = super::metrics::render(&a.mirror);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /api/v1/cache`: image versions on disk, newest pull first, and totals vs capacity.
async fn cache(State(a): State<Admin>) -> Response {
    let store = &a.mirror.store;
    match a.mirror.gc.images().await {
        Ok(images) => Json(json!({
            "images": images,
            "disk": { "used": store.disk.used(), "capacity": a.mirror.gc.capacity() },
            "served_uncached": a.mirror.gc.uncached(),
            "memory": { "used": store.memory.used(), "capacity": store.memory.capacity() },
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/v1/gc`: a pass now, down to the low watermark; answers what it freed and why.
async fn gc(State(a): State<Admin>) -> Response {
    match a.mirror.gc.collect(a.mirror.gc.low_target()).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    image: String,
}

/// The image of a pin request, or the message of a 400.
fn pin_request(body: &[u8]) -> Result<ImageRef, String> {
    let req: PinRequest = serde_json::from_slice(body).map_err(|e| format!("invalid pin request: {e}"))?;
    ImageRef::parse(&req.image).map_err(|e| e.to_string())
}

/// `GET /api/v1/pins`
async fn pins(State(a): State<Admin>) -> Response {
    let meta = a.mirror.store.meta.clone();
    match tokio::task::spawn_blocking(move || meta.pins()).await {
        Ok(Ok(pins)) => {
            let pins: Vec<_> =
                pins.into_iter().map(|(image, p)| json!({"image": image, "digest": p.digest})).collect();
            Json(json!({ "pins": pins })).into_response()
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read pins"),
    }
}

/// `POST /api/v1/pins {"image": "alpine:3.20"}`: resolves the image now and pins it.
async fn pin(State(a): State<Admin>, body: Bytes) -> Response {
    let r = match pin_request(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let resolved = a
        .mirror
        .manifest(Some(&r.host), &r.repo, &r.reference(), &AcceptClass::pull(), Want::Head, Via::Client)
        .await;
    let digest = match resolved {
        Ok(m) => m.digest,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{r}: {e}")),
    };
    let (meta, image) = (a.mirror.store.meta.clone(), r.to_string());
    let pin = Pin { digest: digest.to_string(), pinned_at: now_secs() };
    match tokio::task::spawn_blocking(move || meta.put_pin(&image, &pin)).await {
        Ok(Ok(())) => Json(json!({ "image": r.to_string(), "digest": digest.as_str() })).into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot record the pin"),
    }
}

/// `DELETE /api/v1/pins {"image": "alpine:3.20"}`
async fn unpin(State(a): State<Admin>, body: Bytes) -> Response {
    let r = match pin_request(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (meta, image) = (a.mirror.store.meta.clone(), r.to_string());
    match tokio::task::spawn_blocking(move || meta.remove_pin(&image)).await {
        Ok(Ok(true)) => Json(json!({ "image": r.to_string(), "unpinned": true })).into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, format!("{r} is not pinned")),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot remove the pin"),
    }
}
