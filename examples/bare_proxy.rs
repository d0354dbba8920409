//! The ceiling keygate is measured against (issue 13): the smallest hyper 1 proxy doing
//! the load test's job, nothing else. Per worker thread: a current-thread runtime, its
//! own `SO_REUSEPORT` listener, `hyper::server::conn::http1`, and a pool of
//! `hyper::client::conn::http1` senders to the upstream. Per request: the whole
//! `Authorization` value looked up in a key map (unknown → 401), the key's module
//! allowed by the path's prefix (else 403), `Authorization` removed, `X-Keygate-Token-Id`
//! and `X-Forwarded-For` added, the response streamed back.
//!
//! ```text
//! cargo run --release --example bare_proxy -- LISTEN UPSTREAM KEYS_FILE [WORKERS]
//! ```
//! `KEYS_FILE` has one `<id>:<secret>` per line, each allowed into `/public/v1/agreements`
//! (the load test's tokens); `/public/v1/billing` is a module none of them holds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

type Sender = SendRequest<Incoming>;
type Pool = Rc<RefCell<Vec<Sender>>>;
type ResBody = Either<Full<Bytes>, Returning>;

const X_TOKEN: HeaderName = HeaderName::from_static("x-keygate-token-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The modules: (prefix, index).
const MODULES: [(&str, usize); 2] = [("/public/v1/agreements", 0), ("/public/v1/billing", 1)];

struct State {
    /// `ApiKey <id>:<secret>` → (token id header, allowed module index).
    keys: HashMap<Bytes, (HeaderValue, usize)>,
    upstream: SocketAddr,
    upstream_host: HeaderValue,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bare_proxy LISTEN UPSTREAM KEYS_FILE [WORKERS]";
    let (Some(listen), Some(upstream), Some(keys)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is host:port");
    let workers: usize = args.get(4).map_or(1, |w| w.parse().expect("WORKERS"));
    let mut map = HashMap::new();
    for line in std::fs::read_to_string(keys).expect("KEYS_FILE").lines() {
        let id = line.split(':').next().unwrap_or_default();
        map.insert(
            Bytes::from(format!("ApiKey {line}")),
            (HeaderValue::from_str(id).expect("key id"), 0),
        );
    }
    let state = std::sync::Arc::new(State {
        keys: map,
        upstream,
        upstream_host: HeaderValue::from_str(&upstream.to_string()).expect("host"),
    });
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let state = std::sync::Arc::clone(&state);
            std::thread::spawn(move || worker(listen, state))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn worker(listen: SocketAddr, state: std::sync::Arc<State>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let pool: Pool = Rc::default();
        loop {
            let Ok((stream, remote)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = std::sync::Arc::clone(&state);
            let pool = Rc::clone(&pool);
            let remote_ip = HeaderValue::from_str(&remote.ip().to_string()).expect("ip");
            tokio::task::spawn_local(async move {
                let svc = service_fn(move |req| {
                    let state = std::sync::Arc::clone(&state);
                    let pool = Rc::clone(&pool);
                    let remote_ip = remote_ip.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(&state, &pool, remote_ip, req).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

fn error(status: StatusCode, body: &'static str) -> Response<ResBody> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *res.status_mut() = status;
    res
}

async fn handle(
    state: &State,
    pool: &Pool,
    remote_ip: HeaderValue,
    mut req: Request<Incoming>,
) -> Response<ResBody> {
    let Some((id, allowed)) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| state.keys.get(v.as_bytes()))
    else {
        return error(StatusCode::UNAUTHORIZED, r#"{"error_code":"AUTH_INVALID"}"#);
    };
    let path = req.uri().path();
    let module = MODULES.iter().find(|(p, _)| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    match module {
        None => return error(StatusCode::NOT_FOUND, r#"{"error_code":"ROUTE_NOT_FOUND"}"#),
        Some((_, m)) if m != allowed => {
            return error(StatusCode::FORBIDDEN, r#"{"error_code":"PERM_DENIED"}"#);
        }
        Some(_) => {}
    }
    let id = id.clone();
    let h = req.headers_mut();
    h.remove(AUTHORIZATION);
    h.insert(X_TOKEN, id);
    h.insert(X_FORWARDED_FOR, remote_ip);
    h.insert(HOST, state.upstream_host.clone());

    let mut sender = match checkout(state, pool).await {
        Some(s) => s,
        None => {
            return error(
                StatusCode::BAD_GATEWAY,
                r#"{"error_code":"UPSTREAM_UNAVAILABLE"}"#,
            );
        }
    };
    match sender.send_request(req).await {
        Ok(res) => res.map(|body| {
            Either::Right(Returning {
                body,
                done: false,
                sender: Some(sender),
                pool: Rc::clone(pool),
            })
        }),
        Err(_) => error(
            StatusCode::BAD_GATEWAY,
            r#"{"error_code":"UPSTREAM_UNAVAILABLE"}"#,
        ),
    }
}

/// An idle sender from the pool, else a new connection.
async fn checkout(state: &State, pool: &Pool) -> Option<Sender> {
    loop {
        let Some(mut s) = pool.borrow_mut().pop() else {
            break;
        };
        if s.ready().await.is_ok() {
            return Some(s);
        }
    }
    let stream = TcpStream::connect(state.upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(sender)
}

/// The upstream's body; when it has been read to its end (and hyper drops it) the sender
/// goes back to the pool; an abandoned body drops its connection instead.
struct Returning {
    body: Incoming,
    done: bool,
    sender: Option<Sender>,
    pool: Pool,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
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

impl Drop for Returning {
    fn drop(&mut self) {
        if (self.done || self.body.is_end_stream())
            && let Some(s) = self.sender.take()
        {
            self.pool.borrow_mut().push(s);
        }
    }
}
