//! The registry listener: plain or TLS connections served by hyper (HTTP/1.1, and HTTP/2
//! where the client speaks it), each driven here to its end. Request heads are limited in
//! size; a connection that sends no byte within `head_timeout` (after its TLS handshake,
//! which has as long) is dropped, as is a client that stops reading (`client_idle_timeout`)
//! or an HTTP/2 peer that answers no ping, or whose response body made no progress for as
//! long (an HTTP/2 client that never opens its flow-control window). A connection with no request in flight for
//! `idle_timeout` is closed gracefully. At most `max_connections` are open at once: past it,
//! the next is accepted when one closes. Shutdown stops accepting and closes open
//! connections gracefully, letting their requests finish.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Request heads (request line and headers) larger than this are refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the listener treats its connections (from `[server]`).
pub struct Options {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A write that makes no progress for this long fails (`WriteIdle`); an HTTP/2 peer
    /// silent this long is pinged, and dropped if its answer takes as long again.
    pub client_idle_timeout: Duration,
    /// A client has this long to finish its TLS handshake, then to send its first byte, and
    /// to send each HTTP/1 request head.
    pub head_timeout: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, the next is accepted when one closes.
    pub max_connections: u32,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection of the listener shares.
struct Shared {
    router: Router,
    http: auto::Builder<TokioExecutor>,
    options: Options,
}

/// Serves `router` on `listener` until `shutdown` turns true, then waits for open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let max = options.max_connections;
    let shared = Arc::new(Shared { router, http: http_builder(&options), options });
    let open = Arc::new(Semaphore::new(max as usize));
    let stop = shut_down(shutdown.clone());
    tokio::pin!(stop);
    loop {
        // A turn first, then `accept`: past the cap, connections wait in the listen backlog.
        let turn = tokio::select! {
            turn = open.clone().acquire_owned() => turn.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, &shared, shutdown).await;
            drop(turn);
        });
    }
    drop(listener);
    // Each connection holds its turn until it ends.
    let _ = open.acquire_many(max).await;
    Ok(())
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn shut_down(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// hyper's settings: head limits and deadlines, and HTTP/2 pings that find peers gone away.
fn http_builder(options: &Options) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.head_timeout).max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(options.client_idle_timeout)
        .keep_alive_timeout(options.client_idle_timeout);
    builder
}

/// Serves one accepted connection to its end: the TLS handshake when configured, then HTTP.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) {
    let served = match &shared.options.tls {
        None => serve_http(stream, shared, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(shared.options.head_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_http(tls, shared, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// HTTP on an open connection (plain, or TLS after its handshake), until it ends.
async fn serve_http<T>(io: T, shared: &Shared, shutdown: watch::Receiver<bool>) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = &shared.options;
    let heard = Arc::new(AtomicBool::new(false));
    let io = Heard { inner: WriteIdle::new(io, options.client_idle_timeout), heard: heard.clone() };
    let in_flight = InFlight::new();
    let progress = Progress::new();
    let service = Counting {
        router: TowerToHyperService::new(shared.router.clone()),
        in_flight: in_flight.clone(),
        progress: progress.clone(),
    };
    let conn = shared.http.serve_connection(TokioIo::new(io), service);
    let watch = Watch { in_flight: &in_flight, progress: &progress, heard: &heard };
    drive(conn, watch, options, shutdown).await
}

/// What `drive` watches on one connection.
struct Watch<'a> {
    in_flight: &'a InFlight,
    progress: &'a Progress,
    heard: &'a AtomicBool,
}

/// Drives a connection to its end. It is closed gracefully (requests in flight finish, no
/// new ones are taken) when the server shuts down or once nothing has been in flight for
/// `idle_timeout`. It is dropped if its peer sent no byte within `head_timeout`, if one of
/// its response bodies made no progress for `client_idle_timeout` while it had bytes to
/// send, or if it is still open, and idle, `idle_timeout` after it was asked to close (an
/// HTTP/2 peer that never acknowledges the close).
async fn drive<I>(
    conn: auto::Connection<'_, TokioIo<I>, Counting, TokioExecutor>,
    watch: Watch<'_>,
    options: &Options,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    tokio::pin!(conn);
    let Watch { in_flight, progress, heard } = watch;
    let silent = silent_past(heard, options.head_timeout);
    tokio::pin!(silent);
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => return served,
            () = &mut silent => return Err(timed_out("no byte within head_timeout")),
            () = progress.stalled_for(options.client_idle_timeout) => {
                metrics::counter!("berth_stalled_clients_total").increment(1);
                return Err(timed_out("a response took no byte within client_idle_timeout"));
            }
            () = in_flight.idle_for(options.idle_timeout) => {
                if closing {
                    return Err(timed_out("still open, idle, after being asked to close"));
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = shutdown.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves if the peer has sent no byte within `deadline`; never otherwise.
async fn silent_past(heard: &AtomicBool, deadline: Duration) {
    tokio::time::sleep(deadline).await;
    if heard.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

fn timed_out(why: &'static str) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::TimedOut, why))
}

/// Requests in flight on one connection: each counts from the service call (so one waiting
/// for its answer counts) until its response body is dropped (sent in full, or abandoned).
#[derive(Clone)]
struct InFlight(watch::Sender<usize>);

impl InFlight {
    fn new() -> Self {
        InFlight(watch::Sender::new(0))
    }

    fn begin(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// Resolves once nothing has been in flight for `idle` in one stretch.
    async fn idle_for(&self, idle: Duration) {
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
struct InFlightGuard(watch::Sender<usize>);

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
struct Progress {
    epoch: std::time::Instant,
    bodies: Arc<std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>>,
}

/// The largest frame an HTTP/2 body hands hyper (larger ones are sliced, without copying):
/// the least a client must take per `client_idle_timeout` on each stream.
const H2_SLICE: usize = 256 << 10;

/// A body's stamp: milliseconds since the connection's epoch at which it handed a frame
/// still unclaimed, or `NOT_WAITING`.
const NOT_WAITING: u64 = u64::MAX;

impl Progress {
    fn new() -> Self {
        Progress { epoch: std::time::Instant::now(), bodies: Arc::default() }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    /// A new body's stamp: it has its first frame to hand from now on.
    fn track(&self) -> Arc<AtomicU64> {
        let stamp = Arc::new(AtomicU64::new(self.now()));
        let mut bodies = self.bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&stamp));
        stamp
    }

    /// Resolves once a body has waited `idle` for hyper to come back for more.
    async fn stalled_for(&self, idle: Duration) {
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
struct Counting {
    router: TowerToHyperService<Router>,
    in_flight: InFlight,
    progress: Progress,
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
struct Counted {
    body: Body,
    watched: Option<Watched>,
    _in_flight: InFlightGuard,
}

/// An HTTP/2 body's part in `Progress`: its stamp, and the rest of a frame being sliced.
struct Watched {
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

/// A connection that notes when its peer sends its first byte.
struct Heard<T> {
    inner: T,
    heard: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection whose writes fail once one has waited `idle` without any progress: a
/// client that stops reading is dropped, and with it the body it held (and its read
/// guard), while a slow reader that keeps taking bytes is never cut.
pub struct WriteIdle<T> {
    inner: T,
    idle: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteIdle<T> {
    pub fn new(inner: T, idle: Duration) -> Self {
        WriteIdle { inner, idle, stalled: None }
    }

    /// A write's outcome, watched: progress resets the deadline; no progress arms it, and
    /// fails the write once it has passed.
    fn watch<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let idle = self.idle;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_ready() {
            metrics::counter!("berth_stalled_clients_total").increment(1);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")));
        }
        Poll::Pending
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for WriteIdle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteIdle<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
