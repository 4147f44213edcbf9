//! The registry listener: plain or TLS connections served by hyper (HTTP/1.1, and HTTP/2
//! where the client speaks it), each driven here to its end. Request heads are limited in
//! size; a connection that sends no byte within `head_timeout` (after its TLS handshake,
//! which has as long) is dropped, as is a client that stops reading (`client_idle_timeout`)
//! or an HTTP/2 peer that answers no ping, or whose response body made no progress for as
//! long (an HTTP/2 client that never opens its flow-control window). A connection with no request in flight for
//! `idle_timeout` is closed gracefully. At most `max_connections` are open at once: past it,
//! the next is accepted when one closes. Shutdown stops accepting and closes open
//! connections gracefully, letting their requests finish.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Request heads (request line and headers) larger than this are refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the listener treats its connections (from `[server]`).
pub(crate) struct Options {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// A write that makes no progress for this long fails (`WriteIdle`); an HTTP/2 peer
    /// silent this long is pinged, and dropped if its answer takes as long again.
    pub(crate) client_idle_timeout: Duration,
    /// A client has this long to finish its TLS handshake, then to send its first byte, and
    /// to send each HTTP/1 request head.
    pub(crate) head_timeout: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub(crate) idle_timeout: Duration,
    /// Connections open at once; past it, the next is accepted when one closes.
    pub(crate) max_connections: u32,
}

mod bodies;
mod stream;

use bodies::{Counting, InFlight, Progress};
use stream::Heard;
pub(crate) use stream::WriteIdle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection of the listener shares.
struct Shared {
    router: Router,
    http: auto::Builder<TokioExecutor>,
    options: Options,
}

/// Serves `router` on `listener` until `shutdown` turns true, then waits for open connections.
pub(crate) async fn serve(
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
