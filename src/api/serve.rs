//! The registry listener's accept loop: plain or TLS connections served by hyper (HTTP/1.1,
//! and HTTP/2 where the client speaks it), with limits on request heads, a deadline for the
//! head and the TLS handshake, and a connection whose client stops reading dropped after
//! `client_idle_timeout`. At most `max_connections` are open at once: past it, the next is
//! accepted when one closes. Shutdown stops accepting and lets open connections finish.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Request heads (request line and headers) larger than this are refused.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the listener treats its connections (from `[server]`).
pub struct Options {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A write that makes no progress for this long fails (`WriteIdle`).
    pub client_idle_timeout: Duration,
    /// A client has this long to finish its TLS handshake, and to send a request head.
    pub head_timeout: Duration,
    /// Connections open at once; past it, the next is accepted when one closes.
    pub max_connections: u32,
}

/// Serves `router` on `listener` until `shutdown` turns true, then waits for open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.head_timeout).max_buf_size(MAX_HEAD);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEAD as u32);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let open = Arc::new(Semaphore::new(options.max_connections as usize));
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
        let service = TowerToHyperService::new(router.clone());
        let (builder, watcher, tls, idle, head_timeout) = (
            builder.clone(),
            graceful.watcher(),
            options.tls.clone(),
            options.client_idle_timeout,
            options.head_timeout,
        );
        tokio::spawn(async move {
            let _turn = turn;
            let served = match tls {
                Some(acceptor) => match tokio::time::timeout(head_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let conn = builder.serve_connection(TokioIo::new(WriteIdle::new(tls, idle)), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(WriteIdle::new(stream, idle)), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
