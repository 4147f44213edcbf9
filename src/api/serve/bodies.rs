//! What a connection knows of its requests: how many are in flight (counted until their
//! response body is dropped), and for HTTP/2, whether each body's client is taking it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

/// Requests in flight on one connection: each counts from the service call (so one waiting
/// for its answer counts) until its response body is dropped (sent in full, or abandoned).
#[derive(Clone)]
pub(super) struct InFlight(watch::Sender<usize>);

impl InFlight {
    pub(super) fn new() -> Self {
        InFlight(watch::Sender::new(0))
    }

    pub(super) fn begin(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// Resolves once nothing has been in flight for `idle` in one stretch.
    pub(super) async fn idle_for(&self, idle: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            if *changes.borrow_and_update() > 0 {
                // Cannot fail: `self` holds a sender.
                let _ = changes.changed().await;
            } else if tokio::time::timeout(idle, changes.changed()).await.is_err() {
                return;
            }
        }
    }
}

/// One request counted in flight until dropped.
pub(super) struct InFlightGuard(watch::Sender<usize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The HTTP/2 response bodies of one connection, each stamped with when it last handed
/// hyper a frame that hyper has not come back for. hyper asks an HTTP/2 body for its next
/// frame once the previous one fits the stream's flow-control window, so a body not asked
/// for `client_idle_timeout` is one whose client took less than a frame (`H2_SLICE`) in that
/// time: for instance a stream whose window stays shut, which no write deadline sees since
/// nothing is pending. A body waiting for its own bytes (a fill in progress) is not counted.
/// HTTP/1 needs none of this: a client that stops reading leaves a write pending
/// (`WriteIdle`).
#[derive(Clone)]
pub(super) struct Progress {
    epoch: std::time::Instant,
    bodies: Arc<std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>>,
}

/// The largest frame an HTTP/2 body hands hyper (larger ones are sliced, without copying):
/// the least a client must take per `client_idle_timeout` on each stream.
pub(super) const H2_SLICE: usize = 256 << 10;

/// A body's stamp: milliseconds since the connection's epoch at which it handed a frame
/// still unclaimed, or `NOT_WAITING`.
pub(super) const NOT_WAITING: u64 = u64::MAX;

impl Progress {
    pub(super) fn new() -> Self {
        Progress { epoch: std::time::Instant::now(), bodies: Arc::default() }
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    /// A new body's stamp: it has its first frame to hand from now on.
    pub(super) fn track(&self) -> Arc<AtomicU64> {
        let stamp = Arc::new(AtomicU64::new(self.now()));
        let mut bodies = self.bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&stamp));
        stamp
    }

    /// Resolves once a body has waited `idle` for hyper to come back for more.
    pub(super) async fn stalled_for(&self, idle: Duration) {
        let every = (idle / 4).max(Duration::from_millis(50));
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(every).await;
            let now = self.now();
            let bodies = self.bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let stalled = bodies.iter().filter_map(std::sync::Weak::upgrade).any(|b| {
                let at = b.load(Ordering::Relaxed);
                at != NOT_WAITING && now.saturating_sub(at) >= idle
            });
            if stalled {
                return;
            }
        }
    }
}

/// The router as a hyper service, counting each request in flight on its connection.
#[derive(Clone)]
pub(super) struct Counting {
    pub(super) router: TowerToHyperService<Router>,
    pub(super) in_flight: InFlight,
    pub(super) progress: Progress,
}

impl hyper::service::Service<Request<Incoming>> for Counting {
    type Response = Response<Counted>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Counted>, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.in_flight.begin();
        let progress = (request.version() == http::Version::HTTP_2).then(|| self.progress.clone());
        let answer = self.router.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let watched = progress.map(|p| Watched { stamp: p.track(), progress: p, rest: None });
            Ok(response.map(|body| Counted { body, watched, _in_flight: guard }))
        })
    }
}

/// A response body that keeps its request in flight until the body is dropped; an HTTP/2
/// one is also sliced and stamped for `Progress`.
pub(super) struct Counted {
    body: Body,
    watched: Option<Watched>,
    _in_flight: InFlightGuard,
}

/// An HTTP/2 body's part in `Progress`: its stamp, and the rest of a frame being sliced.
pub(super) struct Watched {
    progress: Progress,
    stamp: Arc<AtomicU64>,
    rest: Option<Bytes>,
}

impl Watched {
    /// The next slice of at most `H2_SLICE` bytes from what is left of the last frame.
    fn next_slice(&mut self) -> Option<Bytes> {
        let rest = self.rest.as_mut()?;
        if rest.len() > H2_SLICE {
            return Some(rest.split_to(H2_SLICE));
        }
        self.rest.take()
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(watched) = this.watched.as_mut() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        if let Some(slice) = watched.next_slice() {
            watched.stamp.store(watched.progress.now(), Ordering::Relaxed);
            return Poll::Ready(Some(Ok(http_body::Frame::data(slice))));
        }
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => {
                watched.stamp.store(NOT_WAITING, Ordering::Relaxed);
                return other;
            }
        };
        watched.stamp.store(watched.progress.now(), Ordering::Relaxed);
        let frame = match frame.into_data() {
            Ok(data) if data.len() > H2_SLICE => {
                watched.rest = Some(data);
                http_body::Frame::data(watched.next_slice().unwrap_or_default())
            }
            Ok(data) => http_body::Frame::data(data),
            Err(other) => other,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.watched.as_ref().is_none_or(|w| w.rest.is_none()) && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.watched.as_ref().and_then(|w| w.rest.as_ref()).map_or(0, |r| r.len() as u64);
        let inner = self.body.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}
