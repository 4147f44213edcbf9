//! The request log: one line per request, written when its body has ended (or was cut), with
//! method, path, ns (or the registry a path prefix chose), status, the tier that answered, bytes sent and duration.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::registry::{ns_of, RoutedTo};
use crate::store::ServedBy;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Middleware for the registry router: adds the API version header and logs the request.
pub(crate) async fn log_requests(req: Request, next: Next) -> Response {
    let line = Line {
        start: Instant::now(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        ns: ns_of(req.uri()),
        status: StatusCode::OK,
        tier: None,
        bytes: 0,
    };
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let (parts, body) = resp.into_parts();
    let ns = parts.extensions.get::<RoutedTo>().map(|r| r.0.clone()).or(line.ns);
    let line = Line { status: parts.status, tier: parts.extensions.get::<ServedBy>().copied(), ns, ..line };
    // The server stops polling a body once Content-Length bytes are out, so "all sent" is
    // judged against that header (a HEAD sends none).
    let expected = if line.method == Method::HEAD {
        Some(0)
    } else {
        parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(body.size_hint().exact())
    };
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, line: Some(line), expected }))
}

struct Line {
    start: Instant,
    method: Method,
    path: String,
    ns: Option<String>,
    status: StatusCode,
    tier: Option<ServedBy>,
    bytes: u64,
}

impl Line {
    fn emit(&self, outcome: &str) {
        let tier = self.tier.map_or("-", ServedBy::as_str);
        metrics::counter!(
            "berth_requests_total",
            "route" => super::metrics::route_of(&self.path),
            "method" => self.method.as_str().to_owned(),
            "status" => self.status.as_u16().to_string(),
            "tier" => tier,
        )
        .increment(1);
        metrics::counter!("berth_served_bytes_total", "tier" => tier).increment(self.bytes);
        tracing::info!(
            target: "berth::request",
            method = %self.method,
            path = %self.path,
            ns = self.ns.as_deref().unwrap_or("-"),
            status = self.status.as_u16(),
            tier = self.tier.map_or("-", ServedBy::as_str),
            bytes = self.bytes,
            ms = self.start.elapsed().as_millis() as u64,
            outcome,
        );
    }
}

struct LoggedBody {
    inner: Body,
    line: Option<Line>,
    /// The body's length when known up front.
    expected: Option<u64>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(line)) = (frame.data_ref(), self.line.as_mut()) {
                    line.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(line) = self.line.take() {
                    line.emit("aborted");
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = self.line.take() {
                    line.emit("complete");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            let sent_all = self.inner.is_end_stream() || self.expected == Some(line.bytes);
            // Not all sent: the client went away, or the body was never polled (HEAD).
            line.emit(if sent_all { "complete" } else { "client-gone" });
        }
    }
}
