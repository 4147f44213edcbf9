//! The peer API on the registry listener: what one berth asks of another besides content.
//! Only peers' requests are taken (`Caller::Peer`: the peer token, decided in `api::caller`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use super::admin::{status_of, Admin};
use super::caller::Caller;
use crate::error::Error;
use crate::preheat::{PreheatRequest, Scope};

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/berth/v1/preheat", post(submit))
        .route("/berth/v1/preheat/{id}", get(status))
        .with_state(admin)
}

/// Refuses what does not come from a peer.
fn from_peer(caller: Caller) -> Result<(), Error> {
    match caller {
        Caller::Peer => Ok(()),
        _ => Err(Error::Denied("the peer API takes requests from peers only".into())),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `POST /berth/v1/preheat`: a peer's share of a cluster preheat, run here as a local job.
async fn submit(State(a): State<Admin>, Extension(caller): Extension<Caller>, body: Bytes) -> Response {
    if let Err(refused) = from_peer(caller) {
        return refused.into_response();
    }
    let mut req: PreheatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid preheat request: {e}")),
    };
    req.scope = Scope::Local; // a peer's share is never fanned out again
    match a.preheater.submit(req) {
        Ok(job) => (StatusCode::ACCEPTED, Json(json!({ "id": job.id }))).into_response(),
        Err(e) => bad_request(e),
    }
}

/// `GET /berth/v1/preheat/<id>`
async fn status(
    State(a): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = from_peer(caller) {
        return refused.into_response();
    }
    match a.preheater.job(&id) {
        Some(job) => Json(status_of(&a, job).await).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no preheat job {id:?}") })))
            .into_response(),
    }
}
