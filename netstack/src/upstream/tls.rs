//! TLS to the upstream: rustls client configs trusting the system roots (rustls-native-certs:
//! `/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus the extra CAs of the host's
//! `[[route]]`, cached per host and ALPN list (so sessions resume across connections).

use super::Connector;
use crate::BoxStream;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::client::TlsStream;

/// How long the upstream may take to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// (host, ALPN protocols).
type ClientKey = (String, Vec<Vec<u8>>);

/// Client configs by (host, ALPN protocols).
#[derive(Default)]
pub(crate) struct ClientConfigs(Mutex<HashMap<ClientKey, Arc<ClientConfig>>>);

/// The system trust anchors, loaded once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            log::warn!("system CA certificates: {e}");
        }
        let mut roots = RootCertStore::empty();
        let (ok, bad) = roots.add_parsable_certificates(found.certs);
        log::debug!("system CA certificates: {ok} loaded, {bad} unparsable");
        roots
    })
}

impl Connector {
    /// The client config for `host` offering `alpn`.
    pub(crate) fn tls_config(
        &self,
        host: &str,
        alpn: &[Vec<u8>],
    ) -> anyhow::Result<Arc<ClientConfig>> {
        let key = (host.to_ascii_lowercase(), alpn.to_vec());
        if let Some(c) = self.tls.0.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let mut roots = system_roots().clone();
        for der in self.extra_roots(host) {
            roots.add(CertificateDer::from(der)).map_err(|e| {
                anyhow::anyhow!(
                    "extra CA for {host} is unusable: {e}; check its [[route]] ca_pem/ca_file"
                )
            })?;
        }
        let mut cfg = ClientConfig::builder_with_provider(crate::ca::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.to_vec();
        let cfg = Arc::new(cfg);
        self.tls.0.lock().unwrap().insert(key, cfg.clone());
        Ok(cfg)
    }

    /// The TLS handshake with the upstream on `io`, for `name` (SNI and the name verified; an IP
    /// literal is verified against iPAddress SANs and sends no SNI, RFC 6066 §3).
    /// Errors: the `std::io::Error` from rustls (certificate problems carry a `rustls::Error`).
    pub(crate) async fn tls_connect(
        &self,
        name: &str,
        alpn: &[Vec<u8>],
        io: BoxStream,
    ) -> anyhow::Result<TlsStream<BoxStream>> {
        let cfg = self.tls_config(name, alpn)?;
        let server = ServerName::try_from(name.to_string())
            .map_err(|e| anyhow::anyhow!("{name:?} is not a valid TLS server name: {e}"))?;
        let handshake = tokio_rustls::TlsConnector::from(cfg).connect(server, io);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                anyhow::anyhow!("no TLS handshake from {name} within {HANDSHAKE_TIMEOUT:?}")
            })??;
        Ok(tls)
    }
}

/// A one-line explanation of an upstream TLS failure for the guest (502 body) and the log.
pub(crate) fn explain(name: &str, e: &anyhow::Error) -> String {
    let rustls_err = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|i| i.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "ax-netstack: the certificate of {name} is not trusted ({c:?}); if {name} is an internal gateway, add its CA to the [[route]] for {name} (ca_pem or ca_file)"
        ),
        Some(other) => format!("ax-netstack: TLS with {name} failed: {other}"),
        None => format!("ax-netstack: cannot reach {name} over TLS: {e}"),
    }
}
