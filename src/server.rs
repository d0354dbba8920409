//! The accept loop: connection limit, optional TLS (ALPN h2 / http/1.1), hyper-util
//! auto (HTTP/1.1 + HTTP/2, h2c by prior knowledge) per connection, header limits,
//! the header-read and idle timeouts, and graceful drain with a deadline.
//!
//! The two timeouts are kept by a small per-connection watchdog rather than by hyper:
//! hyper's HTTP/1 `header_read_timeout` also runs while a keep-alive connection waits
//! for its next request, which would make every idle connection close after the
//! (short) header timeout. Here:
//! - `header_read_timeout` runs from accept (after the TLS handshake) until the first
//!   request head is complete, and later from the first byte of each following head;
//!   a client still sending a head when it passes is disconnected (slowloris).
//! - `idle_timeout` runs while a connection has no request in flight and no head is
//!   arriving; when it passes the connection is closed gracefully (HTTP/2: GOAWAY).
//!
//! One client must not deny service to the others (slowloris, idle floods):
//! - `max_connections_per_ip`: connections from one address beyond it are closed at
//!   once after accept, so they never take one of the `max_connections` slots;
//! - when every slot is taken, connections that are idle (no request in flight, no
//!   bytes of a head received) are closed to make room for the waiting ones;
//! - the listen backlog is [`LISTEN_BACKLOG`] so bursts wait in the kernel, not fail.
//!
//! With [`Workers`] (thread per core), the accept loop hands each connection to one
//! worker thread, and the connection is served there from then on.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, Semaphore, TryAcquireError, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::tls::ALPN_H2;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client's IP as a header value, made once per connection for
    /// `X-Forwarded-For`.
    pub remote_ip: http::HeaderValue,
}

impl ConnInfo {
    /// Connection facts for a client at `remote`.
    pub fn new(remote: SocketAddr, tls: bool) -> ConnInfo {
        let remote_ip = http::HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or(http::HeaderValue::from_static("unknown"));
        ConnInfo {
            remote,
            tls,
            remote_ip,
        }
    }
}

/// Limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// Connections served at once from one client address; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Time to complete a TLS handshake, and to receive a request head (see the
    /// module documentation for when the clock runs).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no head arriving is closed after this.
    pub idle_timeout: Duration,
    /// Request head size limit: the handlers answer larger heads 431 themselves (JSON,
    /// `X-Request-Id`); hyper's own limits are [`hyper_head_limit`] of it.
    pub max_header_bytes: usize,
    /// Deadline for in-flight requests at shutdown.
    pub drain_timeout: Duration,
}

/// Length of the kernel's queue of connections not yet accepted (Linux caps it at
/// `net.core.somaxconn`, 4096 by default since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a listen backlog of [`LISTEN_BACKLOG`] (std and tokio use 128
/// and 1024), `SO_REUSEADDR` set as `TcpListener::bind` does.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections per client address of one listener.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// Counts a connection from `ip`, or `None` when `ip` already has `max`.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard(Arc::clone(self), ip))
    }
}

/// One counted connection; uncounted when dropped.
struct IpGuard(Arc<PerIp>, IpAddr);

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// How often a full listener asks its idle connections again to close.
const RECLAIM_INTERVAL: Duration = Duration::from_millis(250);
/// A connection idle for less than this is never reclaimed: a client that just
/// connected (or just got its answer) may be about to send its request.
const RECLAIM_MIN_IDLE: Duration = Duration::from_millis(500);

/// hyper's smallest allowed HTTP/1 read buffer.
const MIN_BUF: usize = 8192;

/// The head size at which hyper and h2 refuse a request themselves (a bare 431, no
/// JSON, no `X-Request-Id`): twice keygate's own limit, so that heads between the two
/// reach the handler, which answers them 431 in the JSON shape (SPEC §2 row 0). The
/// margin bounds what one request head may make keygate buffer.
pub fn hyper_head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(2).max(MIN_BUF)
}
/// Back-off after an accept error (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The HTTP/2 connection preface (RFC 9113 §3.4): how h2c prior knowledge is told
/// apart from HTTP/1 for the timeouts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the accept loop tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish in-flight requests, accept no new ones on the connection.
    Draining,
    /// Drain deadline passed: close now.
    Closing,
}

/// How many threads serve the proxy's connections for `proxy.workers` (unset: one per
/// core).
pub fn worker_count(workers: Option<usize>) -> usize {
    workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

thread_local! {
    /// This thread's number among the [`Workers`] (0 on any other thread).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The number of the worker thread this runs on, `0..worker_count` (0 outside the
/// workers): what per-worker state, the upstream pool's idle stacks, is indexed by.
pub fn worker_index() -> usize {
    WORKER.get()
}

/// Worker threads that serve a listener's connections (thread per core): each runs its
/// own current-thread runtime. The accept loop hands every connection to the next
/// worker in turn, and everything of that connection — its requests, the upstream
/// connections they use (the upstream pool keeps an idle stack per worker), its
/// timers — stays on that thread: no work stealing, no wake-ups across threads on the
/// request path. Limits, drain and the connection count stay the accept loop's, for
/// all workers together.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` (≥ 1) worker threads; `configure` completes each runtime's builder
    /// (I/O and time are enabled here).
    pub fn start(
        n: usize,
        configure: impl Fn(&mut tokio::runtime::Builder),
    ) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n.max(1) {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            configure(&mut builder);
            let rt = builder.build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            workers.handles.push(rt.handle().clone());
            workers.stops.push(stop);
            // The runtime ends on its own thread when told to (or when `Workers` is
            // dropped): the tasks still there, idle upstream connections, are dropped.
            let thread = std::thread::Builder::new()
                .name(format!("keygate-worker-{i}"))
                .spawn(move || {
                    WORKER.set(i);
                    let _ = rt.block_on(stopped);
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The workers `proxy.workers` asks for ([`worker_count`]): `None` for one, as
    /// that one is the calling runtime's thread.
    pub fn for_config(
        workers: Option<usize>,
        configure: impl Fn(&mut tokio::runtime::Builder),
    ) -> std::io::Result<Option<Workers>> {
        match worker_count(workers) {
            1 => Ok(None),
            n => Workers::start(n, configure).map(Some),
        }
    }

    /// Serves a connection on the next worker: the socket leaves this runtime's
    /// reactor and joins the worker's, so its readiness wakes that thread only.
    fn hand_over<S, F>(&self, stream: tokio::net::TcpStream, serve: S)
    where
        S: FnOnce(tokio::net::TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len().max(1);
        let (Some(worker), Ok(socket)) = (self.handles.get(i), stream.into_std()) else {
            tracing::warn!("a connection could not be handed to a worker; closed");
            return;
        };
        worker.spawn(async move {
            match tokio::net::TcpStream::from_std(socket) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::warn!(error = %e, "a worker could not take a connection; closed")
                }
            }
        });
    }

    /// Ends every worker once the listener has drained, and waits for their threads.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Serves `listener` (with TLS when `tls` is given) until `shutdown` resolves, then
/// drains connections for at most `limits.drain_timeout`. Connections are served on
/// this runtime, or on `workers` when given. Never fails: accept errors are logged and
/// retried.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    workers: Option<Arc<Workers>>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(connection_builder(&limits));
    // Semaphore permits are u32 when taken all at once (the drain below).
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let per_ip = Arc::new(PerIp::default());
    let reclaim = Arc::new(Notify::new());
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);

    loop {
        // Wait for a free slot first: further connections stay in the kernel backlog.
        let Some(permit) = free_slot(&permits, &reclaim, &mut shutdown).await else {
            break;
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
        let Some(ip_guard) = per_ip.enter(remote.ip(), limits.max_connections_per_ip) else {
            // Closed at once: the slot stays free for other clients.
            tracing::debug!(%remote, "refused: max_connections_per_ip reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: Arc::clone(&builder),
            limits: limits.clone(),
            phase: phase_rx.clone(),
            reclaim: Arc::clone(&reclaim),
        };
        let (handler, tls) = (handler.clone(), tls.clone());
        let span = tracing::debug_span!("conn", %remote);
        let run = move |stream| {
            async move {
                conn.handshake_and_run(stream, remote, tls, handler).await;
                drop(ip_guard);
                drop(permit);
            }
            .instrument(span)
        };
        match &workers {
            None => drop(tokio::spawn(run(stream))),
            Some(w) => w.hand_over(stream, run),
        }
    }
    drop(listener);
    drain(local, &phase_tx, &permits, max, limits.drain_timeout).await;
}

/// A connection slot: at once when one is free; otherwise idle connections are asked
/// to make room until one is. `None`: shutting down.
async fn free_slot<S: Future<Output = ()>>(
    permits: &Arc<Semaphore>,
    reclaim: &Notify,
    shutdown: &mut Pin<&mut S>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match Arc::clone(permits).try_acquire_owned() {
        Ok(p) => Some(p),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => loop {
            // Asked again while full: connections idle too briefly the first time (or
            // not yet listening) may be reclaimable now.
            reclaim.notify_waiters();
            tokio::select! {
                p = Arc::clone(permits).acquire_owned() => break p.ok(),
                () = tokio::time::sleep(RECLAIM_INTERVAL) => {}
                () = shutdown.as_mut() => break None,
            }
        },
    }
}

/// After the listener is closed: tells the connections to finish what they serve, and
/// to close at once when `deadline` passes first.
async fn drain(
    local: Option<SocketAddr>,
    phase: &watch::Sender<Phase>,
    permits: &Semaphore,
    max: usize,
    deadline: Duration,
) {
    tracing::info!(listener = ?local, "draining connections");
    let _ = phase.send(Phase::Draining);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(deadline, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(listener = ?local, "drain deadline passed; closing remaining connections");
        let _ = phase.send(Phase::Closing);
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder with `limits` applied.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog keeps the head timeout (hyper's would also cut idle keep-alive).
        .header_read_timeout(None)
        .max_buf_size(hyper_head_limit(limits.max_header_bytes))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(hyper_head_limit(limits.max_header_bytes)).unwrap_or(u32::MAX),
        )
        // PINGs find dead peers; closing idle ones is the watchdog's job.
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(256);
    builder
}

/// What one connection task needs.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    phase: watch::Receiver<Phase>,
    /// Notified when the listener is full: idle connections close.
    reclaim: Arc<Notify>,
}

impl Conn {
    /// Serves one accepted connection: the TLS handshake first (within the head
    /// timeout) when the listener has TLS, then HTTP on it.
    async fn handshake_and_run<H, F, B>(
        self,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
        tls: Option<TlsAcceptor>,
        handler: H,
    ) where
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(acceptor) = tls else {
            let info = ConnInfo::new(remote, false);
            return self.run(stream, false, info, handler).await;
        };
        let hs = tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
        match hs.await {
            Ok(Ok(stream)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                let info = ConnInfo::new(remote, true);
                self.run(stream, h2, info, handler).await;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    /// Serves one (possibly TLS) connection until it ends, times out or is drained.
    async fn run<I, H, F, B>(mut self, io: I, h2: bool, info: ConnInfo, handler: H)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let act = Arc::new(Activity::new(h2, self.limits.header_read_timeout));
        let info = Arc::new(info);
        let svc_act = Arc::clone(&act);
        let service = service_fn(move |req| {
            // Called when a request head is complete (HTTP/1) or a stream opens (HTTP/2).
            let guard = svc_act.request_started();
            let fut = handler(req, Arc::clone(&info));
            async move {
                let res = fut.await;
                Ok::<_, Infallible>(res.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let io = TrackedIo {
            inner: io,
            act: Arc::clone(&act),
            sniffed: if h2 { H2_PREFACE.len() } else { 0 },
            sniffing: !h2,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let hrt = self.limits.header_read_timeout;
        let idle = self.limits.idle_timeout;
        let mut closing: Option<Instant> = None;
        if *self.phase.borrow() != Phase::Serving {
            conn.as_mut().graceful_shutdown();
            closing = Some(Instant::now() + self.limits.drain_timeout);
        }
        // The watchdog's signals are polled only when one of them woke the task: the
        // connection is polled on every wake-up, several times per request, and polling
        // a timer, two `Notified`s and a `watch` each time cost ~3,500 instructions per
        // request (issue 13's accounting).
        let control = Arc::new(ControlWake::default());
        let control_waker = Waker::from(Arc::clone(&control));
        loop {
            // Awake: a head starting now must wake us again (see `Activity::on_read`).
            act.wake_at.store(NONE, Ordering::SeqCst);
            let shutdown = || conn.as_mut().graceful_shutdown();
            let Some(next) = next_look(&act, hrt, idle, &mut closing, shutdown) else {
                return;
            };
            act.wake_at.store(act.ms_at(next), Ordering::SeqCst);
            let event = next_event(
                conn.as_mut(),
                &act,
                next,
                &self.reclaim,
                &mut self.phase,
                &control,
                &control_waker,
            )
            .await;
            match event {
                Event::Ended(e) => {
                    if let Some(e) = e {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                Event::Recheck => {}
                Event::Reclaim => {
                    if closing.is_none() && act.is_idle() {
                        tracing::debug!("listener full; closing this idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + hrt);
                    }
                }
                Event::Phase(sender_gone) => {
                    let phase = *self.phase.borrow_and_update();
                    if sender_gone || phase == Phase::Closing {
                        return;
                    }
                    if closing.is_none() {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + self.limits.drain_timeout);
                    }
                }
            }
        }
    }
}

/// When the watchdog looks again; `None`: close the connection now (a request head
/// past `header_read_timeout`, or an idle connection still open after its grace). An
/// idle connection is first told to close (`shutdown`), with one head timeout of grace.
fn next_look(
    act: &Activity,
    hrt: Duration,
    idle: Duration,
    closing: &mut Option<Instant>,
    shutdown: impl FnOnce(),
) -> Option<Instant> {
    match act.verdict(hrt, idle) {
        Verdict::HeadTimeout => {
            // Dropping the connection closes the socket; no answer is owed to a client
            // that has not finished asking.
            tracing::debug!("request head not complete within header_read_timeout; closing");
            None
        }
        Verdict::Idle => match *closing {
            None => {
                tracing::debug!("idle_timeout passed; closing");
                shutdown();
                // A peer that ignores GOAWAY is cut after one more head timeout.
                let until = Instant::now() + hrt;
                *closing = Some(until);
                Some(until)
            }
            Some(until) if Instant::now() >= until => None,
            Some(until) => Some(until),
        },
        Verdict::Wait(at) => Some(at),
    }
}

/// Waits for the connection to end or for one of the watchdog's signals: the
/// activity wake-up, the deadline `next`, a reclaim request or a phase change. The
/// signals are polled only when one of them woke the task (`control`), not on every
/// wake-up of the connection.
async fn next_event<C, E>(
    mut conn: Pin<&mut C>,
    act: &Activity,
    next: Instant,
    reclaim: &Notify,
    phase: &mut watch::Receiver<Phase>,
    control: &ControlWake,
    control_waker: &Waker,
) -> Event<E>
where
    C: Future<Output = Result<(), E>>,
{
    let wake = act.wake.notified();
    let sleep = tokio::time::sleep_until(next);
    let reclaim = reclaim.notified();
    let phase = phase.changed();
    tokio::pin!(wake, sleep, reclaim, phase);
    // New signal futures: poll each once so that they are registered.
    control.woken.store(true, Ordering::Release);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Event::Ended(r.err()));
        }
        control.task.register(cx.waker());
        if !control.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut ccx = Context::from_waker(control_waker);
        if wake.as_mut().poll(&mut ccx).is_ready() {
            return Poll::Ready(Event::Recheck);
        }
        if sleep.as_mut().poll(&mut ccx).is_ready() {
            return Poll::Ready(Event::Recheck);
        }
        if reclaim.as_mut().poll(&mut ccx).is_ready() {
            return Poll::Ready(Event::Reclaim);
        }
        if let Poll::Ready(r) = phase.as_mut().poll(&mut ccx) {
            return Poll::Ready(Event::Phase(r.is_err()));
        }
        Poll::Pending
    })
    .await
}

/// What ended one wait of [`Conn::run`].
enum Event<E> {
    /// The connection ended (with an error, or not).
    Ended(Option<E>),
    /// A deadline passed or moved: compute the verdict again.
    Recheck,
    /// The listener is full.
    Reclaim,
    /// The listener's phase changed (`true`: its sender is gone).
    Phase(bool),
}

/// The waker given to the watchdog's signal futures: records that one of them fired,
/// then wakes the connection task.
#[derive(Default)]
struct ControlWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// "Not set" for [`Activity::head_since`].
const NONE: u64 = u64::MAX;

/// What the watchdog knows about a connection, written by the IO wrapper (bytes
/// arrived), the service (request started) and the response bodies (request done).
struct Activity {
    epoch: Instant,
    /// Requests whose response body has not been sent (or dropped) yet.
    inflight: AtomicUsize,
    /// Milliseconds since `epoch` when `inflight` last became 0.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` when the head now arriving started, or [`NONE`].
    head_since: AtomicU64,
    /// HTTP/2: there are no heads to time, only streams.
    h2: AtomicBool,
    /// Bytes of a head arrived since the last request started (or since accept).
    head_bytes: AtomicBool,
    /// Wakes the watchdog when a deadline moves earlier.
    wake: Notify,
    /// Milliseconds since `epoch` when the watchdog next looks by itself ([`NONE`]
    /// while it is deciding): a head whose deadline is later needs no wake-up.
    wake_at: AtomicU64,
    /// `header_read_timeout` in milliseconds.
    head_ms: u64,
}

enum Verdict {
    /// Nothing to do before this instant (or a wake-up).
    Wait(Instant),
    /// A head took longer than `header_read_timeout`.
    HeadTimeout,
    /// No request for `idle_timeout`.
    Idle,
}

impl Activity {
    fn new(h2: bool, header_read_timeout: Duration) -> Activity {
        Activity {
            epoch: Instant::now(),
            inflight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // The first head is timed from accept: a client that connects and sends
            // nothing holds a connection slot as surely as a slow one.
            head_since: AtomicU64::new(if h2 { NONE } else { 0 }),
            h2: AtomicBool::new(h2),
            head_bytes: AtomicBool::new(false),
            wake: Notify::new(),
            wake_at: AtomicU64::new(NONE),
            head_ms: u64::try_from(header_read_timeout.as_millis()).unwrap_or(NONE / 2),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// `at` in milliseconds since `epoch`, rounded up (the watchdog wakes no earlier).
    fn ms_at(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(NONE - 1)
    }

    /// Bytes arrived: on an HTTP/1 connection with nothing in flight they start a head.
    /// The watchdog is woken only when the head's deadline comes before the time it
    /// will look anyway: under keep-alive load it sleeps `header_read_timeout` at a
    /// time and no request wakes it (issue 13: a wake-up and a timer per request).
    fn on_read(&self) {
        if self.inflight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && !self.head_bytes.swap(true, Ordering::Relaxed)
        {
            let now = self.now();
            // SeqCst with the watchdog's `wake_at` stores around its `verdict`: either
            // it sees this head, or this sees `NONE` / its planned wake-up.
            if self
                .head_since
                .compare_exchange(NONE, now, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
                && now.saturating_add(self.head_ms) < self.wake_at.load(Ordering::SeqCst)
            {
                self.wake.notify_one();
            }
        }
    }

    /// The connection turned out to be HTTP/2 (prior knowledge).
    fn is_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Release);
        self.wake.notify_one();
    }

    /// No request in flight and no head arriving for at least [`RECLAIM_MIN_IDLE`]:
    /// closing loses nothing (a client that connected and sent nothing counts as idle).
    fn is_idle(&self) -> bool {
        let min = u64::try_from(RECLAIM_MIN_IDLE.as_millis()).unwrap_or(500);
        self.inflight.load(Ordering::Acquire) == 0
            && (self.h2.load(Ordering::Relaxed) || !self.head_bytes.load(Ordering::Relaxed))
            && self
                .now()
                .saturating_sub(self.idle_since.load(Ordering::Acquire))
                >= min
    }

    fn request_started(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.head_bytes.store(false, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Release);
        InflightGuard(Arc::clone(self))
    }

    fn request_finished(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // No wake-up: while requests were in flight the watchdog slept until at most
            // (its last check + idle_timeout), which is never later than this idle
            // deadline, so it recomputes in time. Saves a task poll per request.
            self.idle_since.store(self.now(), Ordering::Release);
        }
    }

    fn verdict(&self, header_read_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE / 2);
        if self.inflight.load(Ordering::Acquire) > 0 {
            // Re-checked by then at the latest: the idle deadline that starts when the
            // last request finishes is never earlier, nor is the deadline of a head
            // that starts after now (so such a head needs no wake-up).
            let step = ms(header_read_timeout).min(ms(idle_timeout));
            return Verdict::Wait(self.at(now.saturating_add(step)));
        }
        let head = self.head_since.load(Ordering::SeqCst);
        if head != NONE {
            let deadline = head.saturating_add(ms(header_read_timeout));
            return if now >= deadline {
                Verdict::HeadTimeout
            } else {
                Verdict::Wait(self.at(deadline))
            };
        }
        let deadline = self
            .idle_since
            .load(Ordering::Acquire)
            .saturating_add(ms(idle_timeout));
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::Wait(self.at(deadline))
        }
    }
}

/// Marks a request done when dropped (its response body finished or was abandoned).
struct InflightGuard(Arc<Activity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: InflightGuard,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The connection's IO, reporting arriving bytes to the watchdog and recognising
    /// the HTTP/2 preface.
    struct TrackedIo<I> {
        #[pin]
        inner: I,
        act: Arc<Activity>,
        sniffed: usize,
        sniffing: bool,
    }
}

impl<I: AsyncRead> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if *this.sniffing {
                let want = &H2_PREFACE[*this.sniffed..];
                let n = want.len().min(new.len());
                if new[..n] == want[..n] {
                    *this.sniffed += n;
                    if *this.sniffed == H2_PREFACE.len() {
                        *this.sniffing = false;
                        this.act.is_h2();
                    }
                } else {
                    *this.sniffing = false;
                }
            }
            this.act.on_read();
        }
        r
    }
}

impl<I: AsyncWrite> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> Limits {
        Limits {
            max_connections: 2,
            max_connections_per_ip: 100,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// One request on a new connection; the body of the answer.
    async fn ask(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// Connections go to the workers in turn and are served on their threads; the
    /// connection limit is the listener's, for all workers together; a request in
    /// flight at shutdown is finished on its worker before `serve` returns.
    #[tokio::test]
    async fn workers_serve_connections_in_turn_share_the_limit_and_drain() {
        let workers = Arc::new(Workers::start(2, |_| {}).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // "/slow" answers once the test lets it through.
        let gate = Arc::new(Semaphore::new(0));
        let handler_gate = Arc::clone(&gate);
        let handler = move |req: Request<Incoming>, _conn: Arc<ConnInfo>| {
            let gate = Arc::clone(&handler_gate);
            async move {
                if req.uri().path() == "/slow" {
                    gate.acquire().await.unwrap().forget();
                }
                let thread = std::thread::current().name().unwrap_or("?").to_string();
                Response::new(Full::new(bytes::Bytes::from(thread)))
            }
        };
        let server = tokio::spawn(serve(
            listener,
            limits(),
            None,
            Some(Arc::clone(&workers)),
            handler,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let mut threads = Vec::new();
        for _ in 0..4 {
            threads.push(ask(addr, "/").await);
        }
        assert_eq!(
            threads,
            [
                "keygate-worker-0",
                "keygate-worker-1",
                "keygate-worker-0",
                "keygate-worker-1"
            ]
        );
        // Two requests in flight take both slots (one on each worker): a third
        // connection waits until one of them is answered.
        let slow = [
            tokio::spawn(ask(addr, "/slow")),
            tokio::spawn(ask(addr, "/slow")),
        ];
        let third = tokio::spawn(ask(addr, "/"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served beyond max_connections"
        );
        gate.add_permits(1);
        assert!(third.await.unwrap().starts_with("keygate-worker-"));
        // Drain: shut down with a request in flight on a worker; it is answered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = stop_tx.send(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !server.is_finished(),
            "serve returned with a request in flight"
        );
        gate.add_permits(1);
        server.await.unwrap();
        for s in slow {
            assert!(s.await.unwrap().starts_with("keygate-worker-"));
        }
        let workers = Arc::into_inner(workers).expect("serve let go of the workers");
        workers.stop().await;
    }
}
