//! The admin listener: health and the preheat API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::preheat::job::{Job, JobState};
use crate::preheat::{PreheatRequest, Preheater};

pub fn router(preheater: Arc<Preheater>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/preheat", get(list).post(submit))
        .route("/api/v1/preheat/{id}", get(status))
        .with_state(preheater)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn status_of(p: &Preheater, job: Arc<Job>) -> serde_json::Value {
    let store = p.mirror().store.clone();
    // Reading the tiers stats files: off the async workers.
    tokio::task::spawn_blocking(move || job.status(&store))
        .await
        .unwrap_or_else(|e| json!({ "error": format!("status failed: {e}") }))
}

/// `POST /api/v1/preheat[?wait=true]`
async fn submit(
    State(p): State<Arc<Preheater>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let req: PreheatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid preheat request: {e}")),
    };
    let job = match p.submit(req) {
        Ok(job) => job,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if q.get("wait").is_some_and(|w| w == "true" || w == "1") {
        let state = job.ended().await;
        let status = if state == JobState::Succeeded { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
        return (status, Json(status_of(&p, job).await)).into_response();
    }
    let body = json!({ "id": job.id, "status_url": format!("/api/v1/preheat/{}", job.id) });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `GET /api/v1/preheat/<id>`
async fn status(State(p): State<Arc<Preheater>>, Path(id): Path<String>) -> Response {
    match p.job(&id) {
        Some(job) => Json(status_of(&p, job).await).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no preheat job {id:?}")),
    }
}

/// `GET /api/v1/preheat`: recent jobs, newest first.
async fn list(State(p): State<Arc<Preheater>>) -> Response {
    let jobs: Vec<_> = p
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
