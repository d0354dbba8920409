//! TLS: the proxy listener (ALPN h2 / http/1.1), certificate reload, the admin
//! listener, and https upstreams with their own CA. Certificates are made by rcgen.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf for localhost / 127.0.0.1 signed by `ca`: (chain PEM, key PEM).
fn leaf(ca: &Ca, cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.signed_by(&key, ca).unwrap();
    (format!("{}{}", cert.pem(), ca.pem()), key.serialize_pem())
}

/// Writes cert and key PEM files into `dir` under `name`; returns their paths.
fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &pair.0).unwrap();
    std::fs::write(&key, &pair.1).unwrap();
    (cert, key)
}

fn tls_toml(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?} }}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// A TLS client trusting only `ca`, offering `alpn`.
fn connector(ca: &Ca, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_connect(addr: SocketAddr, ca: &Ca, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector(ca, alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// The common name of the certificate the server presented.
fn peer_cn(s: &TlsStream<TcpStream>) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    // Find the CN's UTF8String/PrintableString after the CN OID (2.5.4.3) — enough
    // for telling two test certificates apart.
    let oid = [0x55, 0x04, 0x03];
    let at = der
        .windows(3)
        .rposition(|w| w == oid)
        .expect("a CN in the subject");
    let len = der[at + 4] as usize;
    String::from_utf8_lossy(&der[at + 5..at + 5 + len]).into_owned()
}

/// An HTTP/1.1 sender over an established TLS stream.
async fn h1_over(s: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn req(url: &str, key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(url)
        .header("host", "localhost")
        .header("authorization", format!("ApiKey {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(res: Response<Incoming>) -> (StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_listener_speaks_http1_and_h2_by_alpn() {
    let up = spawn_upstream().await;
    let ca = new_ca("test root");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "proxy", &leaf(&ca, "proxy-one"));
    let gw = spawn_gateway(&format!(
        "[proxy]\n{}{}",
        tls_toml(&cert, &key),
        module_toml("alpha", &["/a"], &up.url(), "")
    ))
    .await;
    let (_, api_key) = gw.token(&["alpha"]).await;

    // HTTP/1.1 over TLS.
    let s = tls_connect(gw.proxy, &ca, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_over(s).await;
    let (status, body) = text(h1.send_request(req("/a/one", &api_key)).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /a/one"));
    assert_eq!(up.last().unwrap().headers["x-forwarded-proto"], "https");

    // h2 over TLS, chosen by ALPN.
    let s = tls_connect(gw.proxy, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = Request::builder()
        .uri(format!("https://localhost:{}/a/two", gw.proxy.port()))
        .header("authorization", format!("ApiKey {api_key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.send_request(r).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let (status, body) = text(res).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /a/two"));
    let seen = up.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.target, "/a/two");

    // Plain HTTP on the TLS port gets no answer but a closed connection.
    let answer = raw(gw.proxy, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 0, "{answer}");
}

#[tokio::test]
async fn tls_handshake_is_bounded_by_header_read_timeout() {
    let ca = new_ca("test root");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "proxy", &leaf(&ca, "p"));
    let gw = spawn_gateway(&format!(
        "[proxy]\nheader_read_timeout = \"300ms\"\n{}",
        tls_toml(&cert, &key)
    ))
    .await;
    // Connect and never send a ClientHello.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
}

#[tokio::test]
async fn certificate_reload_serves_the_new_one_and_keeps_old_connections() {
    let up = spawn_upstream().await;
    let ca = new_ca("test root");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "proxy", &leaf(&ca, "first-cert"));
    let toml = format!(
        "[proxy]\n{}{}",
        tls_toml(&cert, &key),
        module_toml("alpha", &["/a"], &up.url(), "")
    );
    let gw = spawn_gateway(&toml).await;
    let (_, api_key) = gw.token(&["alpha"]).await;

    let old = tls_connect(gw.proxy, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_cn(&old), "first-cert");
    let mut old = h1_over(old).await;
    assert_eq!(
        text(old.send_request(req("/a/1", &api_key)).await.unwrap())
            .await
            .0,
        StatusCode::OK
    );

    // A bad key file is refused and the old certificate stays.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = gw.reload.reload().await.expect_err("bad key refused");
    assert!(err.contains("proxy.tls"), "{err}");
    let s = tls_connect(gw.proxy, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_cn(&s), "first-cert");

    // Replace the files, reload.
    write_pair(dir.path(), "proxy", &leaf(&ca, "second-cert"));
    gw.reload.reload().await.expect("reload");
    let new = tls_connect(gw.proxy, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_cn(&new), "second-cert");
    let mut new = h1_over(new).await;
    assert_eq!(
        text(new.send_request(req("/a/2", &api_key)).await.unwrap())
            .await
            .0,
        StatusCode::OK
    );

    // The connection made before the reload still works.
    old.ready().await.expect("old connection alive");
    let (status, body) = text(old.send_request(req("/a/3", &api_key)).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /a/3"));
}

#[tokio::test]
async fn admin_listener_can_use_tls() {
    let ca = new_ca("test root");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "admin", &leaf(&ca, "admin"));
    let gw = spawn_gateway(&format!("[admin]\n{}", tls_toml(&cert, &key))).await;
    let s = tls_connect(gw.admin, &ca, &[b"http/1.1"]).await;
    let mut h1 = h1_over(s).await;
    let r = Request::builder()
        .uri("/healthz")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        text(h1.send_request(r).await.unwrap()).await.0,
        StatusCode::OK
    );
    // The container health probe speaks TLS too (it dials 127.0.0.1 and does not check
    // the certificate's name).
    let config = dir.path().join("probe.toml");
    std::fs::write(&config, format!("[admin]\n{}", tls_toml(&cert, &key))).unwrap();
    // The child runs off this (single-threaded) runtime, which serves the gateway.
    let probe = |admin: SocketAddr, config: PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["healthcheck", "--config"])
                .arg(config)
                .env("KEYGATE_ADMIN_LISTEN", admin.to_string())
                .output()
                .unwrap()
        })
    };
    let out = probe(gw.admin, config.clone()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    // The proxy listener is plain HTTP: the probe's TLS handshake fails there.
    assert!(!probe(gw.proxy, config).await.unwrap().status.success());
}

/// `keygate token list` against an https:// admin listener: verified against
/// `--admin-ca-file` (or `KEYGATE_ADMIN_CA_FILE`), refused without it (the system roots
/// do not know the test CA).
#[tokio::test]
async fn token_commands_work_against_an_https_admin_listener() {
    let ca = new_ca("admin root");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "admin", &leaf(&ca, "admin"));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let gw = spawn_gateway(&format!("[admin]\n{}", tls_toml(&cert, &key))).await;
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, &gw.admin_key).unwrap();
    let url = format!("https://localhost:{}", gw.admin.port());
    let run = |extra: &[&str], env: Option<(&str, &Path)>| {
        let (url, key_file) = (url.clone(), key_file.clone());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env = env.map(|(k, v)| (k.to_string(), v.to_path_buf()));
        tokio::task::spawn_blocking(move || {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
            c.args(["token", "list", "--admin-url", &url, "--admin-key-file"])
                .arg(&key_file)
                .args(&extra)
                .env_remove("KEYGATE_ADMIN_KEY")
                .env_remove("KEYGATE_ADMIN_CA_FILE");
            if let Some((k, v)) = env {
                c.env(k, v);
            }
            c.output().unwrap()
        })
    };
    let ca_arg = ca_file.display().to_string();
    let out = run(&["--admin-ca-file", &ca_arg], None).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("bootstrap admin"), "{stdout}");
    let out = run(&["--json"], Some(("KEYGATE_ADMIN_CA_FILE", &ca_file)))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "bootstrap admin");
    // Without the CA the certificate is not trusted (or there are no system roots at
    // all); the command fails before any request is sent.
    let out = run(&[], None).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the admin API") || stderr.contains("admin TLS"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// https upstreams

/// An HTTP/1.1-over-TLS upstream answering `tls ok <path>` (and the Host it saw).
async fn spawn_tls_upstream(pair: &(String, String)) -> SocketAddr {
    let certs = CertificateDer::pem_slice_iter(pair.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.1.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "tls ok {} host={host}",
                        req.uri().path()
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_with_its_own_ca() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let upstream_ca = new_ca("upstream root");
    let other_ca = new_ca("some other root");
    let up = spawn_tls_upstream(&leaf(&upstream_ca, "upstream")).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("upstream-ca.pem");
    std::fs::write(&good, upstream_ca.pem()).unwrap();
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other_ca.pem()).unwrap();
    let url = format!("https://localhost:{}", up.port());
    let gw = spawn_gateway(&format!(
        "{}{}",
        module_toml(
            "good",
            &["/good"],
            &url,
            &format!("ca_file = {:?}", good.display().to_string())
        ),
        module_toml(
            "wrong",
            &["/wrong"],
            &url,
            &format!("ca_file = {:?}", wrong.display().to_string())
        ),
    ))
    .await;
    let (_, key) = gw.token(&["all"]).await;

    let ok = get(&gw.url("/good/x"), Some(&key)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        ok.text(),
        format!("tls ok /good/x host=localhost:{}", up.port())
    );

    let bad = get(&gw.url("/wrong/x"), Some(&key)).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY, "{}", bad.text());
    assert_eq!(bad.code(), "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn https_upstream_by_ip_address_and_system_roots_refuse_a_private_ca() {
    let upstream_ca = new_ca("upstream root");
    let up = spawn_tls_upstream(&leaf(&upstream_ca, "upstream")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, upstream_ca.pem()).unwrap();
    // Certificates name 127.0.0.1 too: an IP upstream verifies against the IP SAN.
    let by_ip = module_toml(
        "ip",
        &["/ip"],
        &format!("https://127.0.0.1:{}", up.port()),
        &format!("ca_file = {:?}", ca.display().to_string()),
    );
    // Without ca_file the system roots are used, which do not know this CA. Point
    // SSL_CERT_FILE-free discovery at whatever the machine has; if it has no roots at
    // all, start-up would fail with a clear error instead (covered by the unit test).
    let system = rustls_native_certs_present();
    let sys_module = if system {
        module_toml(
            "sys",
            &["/sys"],
            &format!("https://localhost:{}", up.port()),
            "",
        )
    } else {
        String::new()
    };
    let gw = spawn_gateway(&format!("{by_ip}{sys_module}")).await;
    let (_, key) = gw.token(&["all"]).await;
    let ok = get(&gw.url("/ip/x"), Some(&key)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    if system {
        let bad = get(&gw.url("/sys/x"), Some(&key)).await;
        assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
        assert_eq!(bad.code(), "UPSTREAM_UNAVAILABLE");
    }
}

fn rustls_native_certs_present() -> bool {
    keygate::tls::client_config(keygate::tls::Trust::System).is_ok()
}
