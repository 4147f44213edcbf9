//! Upstream statuses as berth answers them: not found as the route's OCI error, client errors
//! passed on with their status and OCI body, berth's own credentials refused as `DENIED`, rate
//! limits with Retry-After, and everything else as `UNAVAILABLE`.

use http::{header, StatusCode};

use super::upstream::body_at_most;
use crate::error::Error;

/// Upstream error bodies longer than this are cut to a generic one.
const MAX_ERROR_BODY: u64 = 16 * 1024;

/// Maps an upstream status to berth's errors; `not_found` is the OCI error for a 404.
/// Other client errors (400 `MANIFEST_INVALID` for an Accept the manifest does not match,
/// 416, ...) are the client's: passed on with upstream's status and OCI error body. 401 and
/// 403 are about berth's own credentials (`DENIED`); 5xx and the rest are `UNAVAILABLE`.
pub(super) async fn check(resp: reqwest::Response, not_found: Error) -> Result<reqwest::Response, Error> {
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(not_found);
    }
    check_passthrough(resp).await
}

/// As `check`, for answers passed through (tags/list, referrers): a 404 keeps upstream's
/// code too.
pub(super) async fn check_passthrough(resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::UpstreamDenied(format!("upstream answered {status}"))
        }
        StatusCode::TOO_MANY_REQUESTS => Error::TooManyRequests {
            retry_after: resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
        StatusCode::PROXY_AUTHENTICATION_REQUIRED | StatusCode::REQUEST_TIMEOUT => {
            Error::Unavailable(format!("upstream answered {status}"))
        }
        s if s.is_client_error() => client_error(resp).await,
        _ => Error::Unavailable(format!("upstream answered {status}")),
    })
}

/// An upstream client error as berth passes it on: its status, and its body when that is an
/// OCI error document of reasonable size (else a generic one with the same status).
async fn client_error(resp: reqwest::Response) -> Error {
    let status = resp.status().as_u16();
    let body = body_at_most(resp, MAX_ERROR_BODY, "upstream").await.ok();
    let code = body.as_deref().and_then(crate::error::first_code);
    match (body, code) {
        (Some(body), Some(code)) => Error::Upstream { status, code, body },
        _ => {
            let body = crate::error::oci_body("UNKNOWN", &format!("upstream answered {status}"));
            Error::Upstream { status, code: "UNKNOWN".into(), body: body.into() }
        }
    }
}
