//! The peer API on the registry listener: what one berth asks of another besides content.
//! Only peers' requests are taken (`Caller::Peer`: the peer token, decided in `api::caller`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::admin::{body_of, status_of, Admin};
use super::admin_error::AdminError;
use super::caller::Caller;
use crate::error::Error;
use crate::preheat::status::{Accepted, JobStatus};
use crate::preheat::{PreheatRequest, Scope};

pub(crate) fn router(admin: Admin) -> Router {
    Router::new()
        .route("/berth/v1/preheat", post(submit))
        .route("/berth/v1/preheat/{id}", get(status))
        .with_state(admin)
}

/// Refuses what does not come from a peer.
fn from_peer(caller: Caller) -> Result<(), AdminError> {
    match caller {
        Caller::Peer => Ok(()),
        _ => {
            Err(AdminError::NotFromPeer(Error::Denied("the peer API takes requests from peers only".into())))
        }
    }
}

/// `POST /berth/v1/preheat`: a peer's share of a cluster preheat, run here as a local job.
async fn submit(
    State(a): State<Admin>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), AdminError> {
    from_peer(caller)?;
    let mut req: PreheatRequest = body_of("preheat", &body)?;
    req.scope = Scope::Local; // a peer's share is never fanned out again
    let job = a.preheater.submit(req)?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { id: job.id.clone(), status_url: None })))
}

/// `GET /berth/v1/preheat/<id>`
async fn status(
    State(a): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, AdminError> {
    from_peer(caller)?;
    let job = a.preheater.job(&id).ok_or(AdminError::NoJob(id))?;
    Ok(Json(status_of(&a, job).await?))
}
