//! The one HTTP client of the command line: requests to the admin API over `http://`
//! or `https://` (rustls), with a whole-request deadline. `keygate token …` and
//! `keygate healthcheck` both use it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::error::error_chain;
use keygate::tls::{self, Trust};

use super::CliError;

/// Which certificates an `https://` admin URL may present.
#[derive(Debug, Clone, Copy)]
pub enum Verify<'a> {
    /// Signed by the system's roots, or by the CA in this file; name checked.
    Roots(Option<&'a Path>),
    /// Any: only for the credential-free health probe of a listener on this host,
    /// whose certificate is for the public name while the probe dials 127.0.0.1.
    Nothing,
}

/// An answer, whatever its status.
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// A client of one admin listener.
pub struct AdminClient {
    base: String,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// A client of `base` (`http://host:port` or `https://host:port`); certificates
    /// are checked as `verify` says, and only when the URL is `https://`.
    pub fn new(base: &str, verify: Verify<'_>, timeout: Duration) -> Result<AdminClient, CliError> {
        let base = base.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            return Err(CliError(format!(
                "admin URL {base:?} must start with http:// or https://"
            )));
        }
        let tls = match verify {
            // A plain-HTTP client never reads the system trust store.
            _ if !https => tls::client_config(Trust::Nothing),
            Verify::Roots(Some(ca)) => tls::client_config(Trust::File(ca)),
            Verify::Roots(None) => tls::client_config(Trust::System),
            Verify::Nothing => tls::probe_client_config(),
        }
        .map_err(|e| CliError(format!("admin TLS: {e}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(AdminClient {
            base,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends `method path` (with `Authorization: ApiKey <key>` when given, and a JSON
    /// body when given) and reads the whole answer within the deadline.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        json: Option<String>,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| CliError(format!("bad admin URL {url:?}: {e}")))?;
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            req = req.header("authorization", format!("ApiKey {key}"));
        }
        if json.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(json.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| CliError(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| {
                CliError(format!(
                    "cannot reach the admin API at {}: {}",
                    self.base,
                    error_chain(&e)
                ))
            })?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| CliError(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                CliError(format!(
                    "no answer from {} within {}s",
                    self.base,
                    self.timeout.as_secs()
                ))
            })?
    }
}
