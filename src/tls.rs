//! TLS with rustls (ring): the listeners' server configuration with a certificate that
//! can be swapped while connections stay up (SIGHUP), and the client configuration for
//! `https://` upstreams (system roots or a module's `ca_file`) and the command line's
//! admin client.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// ALPN protocol ids offered by the listeners, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The one crypto provider keygate uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block found",
            files.cert.display()
        ));
    }
    // The error text of a key file never includes its content.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no usable private key ({e})", files.key.display()))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))
}

/// The certificate a listener presents, replaceable at any time. Handshakes in progress
/// keep the key they started with; established connections are not touched.
pub struct CertSlot {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CertSlot").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS on one listener: its acceptor and the slot its certificate lives in.
#[derive(Clone)]
pub struct ServerTls {
    slot: Arc<CertSlot>,
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// Loads the certificate and builds the server configuration: TLS 1.2 and 1.3 with
    /// the provider's safe defaults, ALPN `h2` then `http/1.1`, no client certificates.
    pub fn load(files: &TlsFiles) -> Result<ServerTls, String> {
        let key = load_certified_key(files)?;
        let slot = Arc::new(CertSlot {
            current: ArcSwap::from_pointee(key),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&slot) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(ServerTls {
            slot,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Presents `key` to every new handshake from now on.
    pub fn swap(&self, key: CertifiedKey) {
        self.slot.current.store(Arc::new(key));
    }
}

/// Which certificates an upstream client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The operating system's roots.
    System,
    /// The PEM certificates in this file (a module's `ca_file`).
    File(&'a Path),
    /// Nothing: for a client that only ever speaks plain HTTP.
    Nothing,
}

/// Client configuration for `https://` upstreams. ALPN is left empty: the connector
/// offers `http/1.1` only (the upstream pool speaks HTTP/1.1 whatever the client spoke).
pub fn client_config(trust: Trust<'_>) -> Result<ClientConfig, String> {
    let roots = match trust {
        Trust::File(path) => roots_from_file(path)?,
        Trust::System => system_roots()?,
        Trust::Nothing => RootCertStore::empty(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(roots)
}

/// The operating system's trusted roots (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no system root certificates found{why}: install the ca-certificates package, \
             set SSL_CERT_FILE, or give the module a ca_file"
        ));
    }
    Ok(roots)
}

/// Client configuration for the credential-free health probe (`keygate healthcheck`):
/// it does not verify the certificate, since it dials its own listener on this host
/// (127.0.0.1) while the certificate is for the public name. It still checks the
/// handshake signatures. Never for a request that carries a credential.
pub fn probe_client_config() -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(probe::AnyCert(provider())))
        .with_no_client_auth())
}

mod probe {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts any certificate but still checks the handshake signatures. Only for
    /// the credential-free health probe.
    #[derive(Debug)]
    pub(super) struct AnyCert(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
