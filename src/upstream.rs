//! The upstream connection pool: one per module, HTTP/1.1 keep-alive connections made
//! with `hyper::client::conn::http1` (plain TCP or rustls), at most
//! `max_upstream_connections` of them at once (SPEC §5).
//!
//! Why not hyper-util's legacy `Client`: its pool is one map behind a mutex, keyed by a
//! hashed origin, and every request goes through a channel to a connection task that
//! may live on another worker. Here the idle connections of a module are kept in one
//! small stack per worker thread (a mutex only that thread takes, unless the module is
//! at its limit), the connection task is spawned on the worker that made it, and the
//! request is handed to it directly (issue 13's accounting). A connection goes back to
//! the pool when the response body has been read to its end; one whose body is
//! abandoned is closed.
//!
//! The limit counts open connections (idle or busy). A request that finds none idle and
//! the module at its limit waits until a connection is returned or one closes; the
//! caller bounds the wait with the module's `timeout` (504 `UPSTREAM_TIMEOUT`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

use crate::config::Upstream;

/// TCP connect (and TLS handshake) timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections are closed after 3–4 s: below common upstream keep-alive timeouts
/// (nginx 75 s, Node 5 s) so a request rarely races a closing connection.
const IDLE_TICKS: u32 = 3;
/// How often idle connections are looked at.
const TICK: Duration = Duration::from_secs(1);

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect or TLS handshake failed or timed out.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed (reset, closed early, malformed answer), or the
    /// request body failed while being sent.
    #[error("{0}")]
    Protocol(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether the connection could not be made at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// The pool of one module's upstream.
pub struct Pool<B> {
    upstream: Upstream,
    /// rustls for `https://` upstreams.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// Idle connections, newest last, one stack per worker thread.
    shards: Box<[Mutex<Vec<Idle<B>>>]>,
    /// Requests waiting at the limit.
    waiting: AtomicUsize,
    /// Wakes one of them when a connection is returned.
    returned: Notify,
    /// Seconds counter advanced by the reaper (no clock read per request).
    tick: AtomicU32,
    /// Whether the reaper runs.
    reaper: std::sync::Once,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: u32,
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.upstream.authority)
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// This thread's idle stack in a pool of `n`: the worker's own (see [`Pool::new`]).
fn shard_index(n: usize) -> usize {
    crate::server::worker_index() % n
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool for `upstream` with at most `max_connections` open connections, and one
    /// idle stack for each of `workers` worker threads ([`crate::server::worker_index`]):
    /// a connection is created, driven and reused on one worker. `tls` is required for
    /// an `https://` upstream.
    pub fn new(
        upstream: Upstream,
        tls: Option<Arc<rustls::ClientConfig>>,
        max_connections: usize,
        workers: usize,
    ) -> Result<Arc<Pool<B>>, String> {
        let tls = match (upstream.https, tls) {
            (false, _) => None,
            (true, None) => return Err("an https upstream needs a TLS configuration".into()),
            (true, Some(cfg)) => {
                let host = upstream.authority.host();
                // An IPv6 literal is bracketed in the authority, not in a ServerName.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("upstream host {host:?}: {e}"))?;
                Some((TlsConnector::from(cfg), name))
            }
        };
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Arc::new(Pool {
            upstream,
            tls,
            permits: Arc::new(Semaphore::new(max_connections)),
            shards: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            waiting: AtomicUsize::new(0),
            returned: Notify::new(),
            tick: AtomicU32::new(0),
            reaper: std::sync::Once::new(),
        }))
    }

    /// Sends `req` on an idle or new connection and returns the response head; the
    /// body returns the connection to the pool once read to its end. Waits (unbounded:
    /// the caller's timeout bounds it) while the module is at its connection limit.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        self.reaper.call_once(|| {
            tokio::spawn(reap(Arc::downgrade(self)));
        });
        // A pooled connection the upstream closed in the meantime refuses the request
        // unsent: try the next one (a new connection is tried once).
        loop {
            let (mut sender, reused) = self.checkout().await?;
            match sender.try_send_request(req).await {
                Ok(res) => {
                    return Ok(res.map(|body| PooledBody {
                        body,
                        done: false,
                        back: Some((sender, Arc::clone(self))),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Protocol(e.into_error())),
                },
            }
        }
    }

    /// An idle connection of this thread's stack, else a new one, else (at the limit)
    /// one returned or freed by another request. `true` when reused.
    async fn checkout(&self) -> Result<(SendRequest<B>, bool), UpstreamError> {
        let own = shard_index(self.shards.len());
        if let Some(s) = self.pop_ready(own).await {
            return Ok((s, true));
        }
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            // Boxed (here and below): connecting is rare, and its future (TCP, TLS
            // handshake) would otherwise size every request's future (issue 13).
            return Ok((Box::pin(self.connect(permit)).await?, false));
        }
        // At the limit: take an idle connection from any stack, or wait for one.
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            for i in 0..self.shards.len() {
                if let Some(s) = self.pop_ready((own + i) % self.shards.len()).await {
                    return Ok((s, true));
                }
            }
            tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => {
                    let Ok(permit) = permit else { continue };
                    return Ok((Box::pin(self.connect(permit)).await?, false));
                }
                () = returned => {}
            }
        }
    }

    /// The newest usable idle connection of stack `i`.
    async fn pop_ready(&self, i: usize) -> Option<SendRequest<B>> {
        loop {
            let idle = self.shards[i].lock().ok()?.pop()?;
            let mut sender = idle.sender;
            // Ready at once unless its connection task has not yet seen the end of the
            // previous response; an error means the upstream closed it.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<SendRequest<B>, UpstreamError> {
        let authority = self.upstream.authority.as_str();
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
            .await
            .map_err(|_| UpstreamError::Connect(timed_out()))?
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder.max_buf_size(MAX_RESPONSE_HEAD);
        let sender = match &self.tls {
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(UpstreamError::Protocol)?;
                tokio::spawn(drive(conn, permit));
                sender
            }
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| UpstreamError::Connect(timed_out()))?
                        .map_err(UpstreamError::Connect)?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(UpstreamError::Protocol)?;
                tokio::spawn(drive(conn, permit));
                sender
            }
        };
        Ok(sender)
    }
}

impl<B> Pool<B> {
    /// Puts a connection whose response has ended back on this thread's stack.
    fn checkin(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let since = self.tick.load(Ordering::Relaxed);
        if let Ok(mut stack) = self.shards[shard_index(self.shards.len())].lock() {
            stack.push(Idle { sender, since });
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.returned.notify_one();
        }
    }
}

/// Largest upstream response head (hyper's default read buffer limit).
const MAX_RESPONSE_HEAD: usize = 400 * 1024;

/// Runs one connection until it closes; its slot is free again after that.
async fn drive<T, B>(conn: http1::Connection<T, B>, permit: OwnedSemaphorePermit)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
    drop(permit);
}

/// Closes idle connections older than [`IDLE_TICKS`]; ends with the pool.
async fn reap<B>(pool: Weak<Pool<B>>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.tick.fetch_add(1, Ordering::Relaxed) + 1;
        for shard in pool.shards.iter() {
            if let Ok(mut stack) = shard.lock() {
                // Oldest first: stop at the first one still fresh.
                let stale = stack
                    .iter()
                    .take_while(|i| now.wrapping_sub(i.since) >= IDLE_TICKS)
                    .count();
                stack.drain(..stale);
                stack.retain(|i| !i.sender.is_closed());
            }
        }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The upstream's response body, streamed; when it has been read to its end the
/// connection goes back to the pool (when it is dropped before that, the connection
/// is closed: what is left of the body would have to be read first).
pub struct PooledBody<B> {
    body: Incoming,
    done: bool,
    back: Option<(SendRequest<B>, Arc<Pool<B>>)>,
}

impl<B> Body for PooledBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
            if let Some((sender, pool)) = self.back.take() {
                pool.checkin(sender);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended (Content-Length reached),
        // so "ended" is also read from the body itself.
        if (self.done || self.body.is_end_stream())
            && let Some((sender, pool)) = self.back.take()
        {
            pool.checkin(sender);
        }
    }
}
