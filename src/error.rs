//! The one error type, and the one place that maps it to an HTTP status and an OCI error body.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// Every failure berth can answer with. Variants say where the fault lies: the client's
/// request, the upstream registry, the content itself, or berth.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    // The client's request.
    NameInvalid(String),
    DigestInvalid(String),
    TagInvalid(String),
    RangeNotSatisfiable {
        len: u64,
    },
    Unsupported(String),
    Denied(String),
    /// No or wrong credentials for the registry API (`[auth]`).
    Unauthorized(String),
    // Not found, here or upstream.
    BlobUnknown,
    ManifestUnknown,
    NameUnknown,
    // The upstream registry.
    Unavailable(String),
    TooManyRequests {
        retry_after: Option<String>,
    },
    UpstreamDenied(String),
    ManifestTooLarge(u64),
    /// A blob announced or sent larger than `storage.max_blob_size`, or sent without a length
    /// past the whole disk tier when it cannot be kept.
    BlobTooLarge(u64),
    /// A client error upstream answered (4xx but 401, 403, 404, 429), passed on as it is:
    /// its status, the first OCI error code of its body, and that body.
    Upstream {
        status: u16,
        code: String,
        body: bytes::Bytes,
    },
    /// Upstream bytes that do not match their digest or announced length.
    Integrity(String),
    // berth itself.
    /// A fault of berth's, said in words.
    Internal(String),
    /// A fault of berth's caused by another error, kept as its source: what berth was doing
    /// (empty when the source says it all), and that error.
    Fault {
        context: String,
        source: Cause,
    },
}

/// Any error, as a cause (also a message: `&str` and `String` convert).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error beneath an `Error::Fault`. Shared, so that `Error` stays `Clone` (a fill's error
/// reaches each of its clients); two causes are equal when they read the same.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Error {
    /// A fault of berth's caused by `e`.
    pub(crate) fn internal(e: impl Into<BoxError>) -> Self {
        Error::fault("", e)
    }

    /// A fault of berth's caused by `e` while doing what `context` says.
    pub(crate) fn fault(context: impl Into<String>, e: impl Into<BoxError>) -> Self {
        Error::Fault { context: context.into(), source: Cause(Arc::from(e.into())) }
    }

    /// What went wrong, without the "internal error: " a fault of berth's carries.
    pub(crate) fn detail(&self) -> String {
        match self {
            Error::Internal(m) => m.clone(),
            Error::Fault { context, source } if context.is_empty() => source.to_string(),
            Error::Fault { context, source } => format!("{context}: {source}"),
            e => e.to_string(),
        }
    }

    /// The status and OCI error code for this error.
    fn status_code(&self) -> (StatusCode, &'static str) {
        use Error::*;
        match self {
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            // A reference that is no valid tag names no manifest (as distribution answers).
            TagInvalid(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Denied(_) | UpstreamDenied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            NameUnknown => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            ManifestTooLarge(_) => (StatusCode::BAD_GATEWAY, "MANIFEST_INVALID"),
            BlobTooLarge(_) => (StatusCode::BAD_GATEWAY, "SIZE_INVALID"),
            Upstream { status, .. } => {
                (StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY), "UNKNOWN")
            }
            Integrity(_) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
            Internal(_) | Fault { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status_code().0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use Error::*;
        match self {
            NameInvalid(m) | DigestInvalid(m) | TagInvalid(m) | Unsupported(m) | Denied(m)
            | Unauthorized(m) => f.write_str(m),
            RangeNotSatisfiable { len } => write!(f, "range not satisfiable for {len} bytes"),
            BlobUnknown => f.write_str("blob unknown to registry"),
            ManifestUnknown => f.write_str("manifest unknown"),
            NameUnknown => f.write_str("repository name not known to registry"),
            Unavailable(m) => write!(f, "upstream unavailable: {m}"),
            TooManyRequests { .. } => f.write_str("upstream rate limit reached"),
            UpstreamDenied(m) => write!(f, "upstream denied access: {m}"),
            ManifestTooLarge(n) => write!(f, "manifest of {n} bytes exceeds the 4 MiB limit"),
            BlobTooLarge(n) => {
                write!(f, "upstream blob of {n} bytes is larger than storage.max_blob_size or, with no length, the disk tier")
            }
            Upstream { status, code, .. } => write!(f, "upstream answered {status} {code}"),
            Integrity(m) => write!(f, "upstream content rejected: {m}"),
            Internal(_) | Fault { .. } => write!(f, "internal error: {}", self.detail()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Fault { source, .. } => Some(&*source.0),
            _ => None,
        }
    }
}

impl From<crate::oci::Invalid> for Error {
    fn from(e: crate::oci::Invalid) -> Self {
        use crate::oci::Invalid;
        match e {
            Invalid::Name(m) | Invalid::ImageRef(m) | Invalid::Platform(m) => Error::NameInvalid(m),
            Invalid::Digest(m) => Error::DigestInvalid(m),
            Invalid::Tag(m) => Error::TagInvalid(m),
            Invalid::Range { len } => Error::RangeNotSatisfiable { len },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let body = match &self {
            Error::Upstream { body, .. } => body.clone(),
            _ => oci_body(code, &self.to_string()).into(),
        };
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            Error::TooManyRequests { retry_after: Some(v) } => {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            Error::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"berth\""));
            }
            Error::RangeNotSatisfiable { len } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// An OCI error document with one error.
pub(crate) fn oci_body(code: &str, message: &str) -> String {
    serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] }).to_string()
}

/// The first error code of an OCI error document, if `body` is one.
pub fn first_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        code: String,
    }
    let doc: Doc = serde_json::from_slice(body).ok()?;
    let code = doc.errors.into_iter().next()?.code;
    let printable = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_graphic());
    printable.then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: Error) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_fault_keeps_its_cause_and_answers_as_an_internal_error_does() {
        let fault = Error::fault("disk tier", std::io::Error::other("disk on fire"));
        let source = std::error::Error::source(&fault).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
        assert_eq!(fault.to_string(), "internal error: disk tier: disk on fire");
        assert_eq!(fault.detail(), "disk tier: disk on fire");
        assert_eq!(fault.clone(), fault);
        let said = Error::Internal("disk tier: disk on fire".into());
        assert_eq!(answer(fault).await, answer(said).await);
        let bare = Error::internal(std::io::Error::other("gone"));
        let (status, body) = answer(bare).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errors"][0]["code"], "UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "internal error: gone");
    }
}
