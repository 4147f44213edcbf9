//! What the admin API, and the preheat routes of the peer API, answer when a request fails: a
//! status and `{"error": "<message>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::Error;
use crate::oci::image_ref::ImageRef;
use crate::oci::Invalid;
use crate::preheat::status::ErrorBody;
use crate::preheat::SubmitError;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// No admin token, or a wrong one (401).
    #[error("the admin API needs Authorization: Bearer <admin token>")]
    Unauthorized,
    /// A body that is not the JSON the route takes (400).
    #[error("invalid {what} request: {source}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A preheat request refused (400).
    #[error(transparent)]
    Preheat(#[from] SubmitError),
    /// An image reference or digest that does not parse (400).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// An image to pin that does not resolve (400).
    #[error("{image}: {source}")]
    Unresolved {
        image: String,
        #[source]
        source: Error,
    },
    #[error("no preheat job {0:?}")]
    NoJob(String),
    #[error("no [peers] configured: this instance works alone")]
    NoPeers,
    #[error("{0} is not pinned")]
    NotPinned(ImageRef),
    /// A request to the peer API that does not come from a peer: answered as the registry
    /// listener answers (an OCI error), since the peer API is on it.
    #[error(transparent)]
    NotFromPeer(Error),
    /// The collector or the store failed (500).
    #[error(transparent)]
    Store(Error),
    /// Work berth could not do, and why (500).
    #[error("{what}: {source}")]
    Internal {
        what: &'static str,
        #[source]
        source: Cause,
    },
}

impl AdminError {
    pub(crate) fn internal(what: &'static str, source: impl Into<Cause>) -> AdminError {
        AdminError::Internal { what, source: source.into() }
    }

    pub(crate) fn status(&self) -> StatusCode {
        use AdminError::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            Unreadable { .. } | Preheat(_) | Invalid(_) | Unresolved { .. } => StatusCode::BAD_REQUEST,
            NoJob(_) | NoPeers | NotPinned(_) => StatusCode::NOT_FOUND,
            NotFromPeer(e) => e.status(),
            Store(_) | Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let AdminError::NotFromPeer(e) = self {
            return e.into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "admin request failed");
        }
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: AdminError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn errors_answer_their_status_and_an_error_message() {
        let (status, body) = answer(AdminError::NoJob("x".into())).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, serde_json::json!({"error": "no preheat job \"x\""}))
        );
        let cause = std::io::Error::other("disk on fire");
        let (status, body) = answer(AdminError::internal("cannot read pins", cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "cannot read pins: disk on fire");
    }

    #[test]
    fn an_internal_error_keeps_its_cause() {
        let e = AdminError::internal("cannot read pins", std::io::Error::other("disk on fire"));
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
    }

    #[tokio::test]
    async fn a_refusal_of_the_peer_api_is_an_oci_error() {
        let (status, body) = answer(AdminError::NotFromPeer(Error::Denied("peers only".into()))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errors"][0]["code"], "DENIED");
    }
}
