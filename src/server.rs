//! The accept loop: connection limit, hyper-util auto (HTTP/1.1 + h2c) per connection,
//! header limits and timeouts, graceful drain with a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the backlog.
    pub max_connections: usize,
    /// Time to receive a whole request head (HTTP/1). hyper starts this clock when it
    /// waits for a head, so it also bounds how long a keep-alive connection may sit idle.
    pub header_read_timeout: Duration,
    /// HTTP/2 connections with no open stream for this long are closed (PING keep-alive).
    pub idle_timeout: Duration,
    /// Request head size limit (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Deadline for in-flight requests at shutdown.
    pub drain_timeout: Duration,
}

/// hyper's smallest allowed HTTP/1 read buffer.
const MIN_BUF: usize = 8192;
/// Back-off after an accept error (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown` resolves, then drains connections for at most
/// `limits.drain_timeout`. Never fails: accept errors are logged and retried.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);

    loop {
        // Wait for a free slot first: further connections stay in the kernel backlog.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let info = Arc::new(ConnInfo { remote, tls: false });
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let fut = handler(req, Arc::clone(&info));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("conn", %remote);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!(listener = ?local, "draining connections");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = ?local, "drain deadline passed; closing remaining connections");
    }
}
