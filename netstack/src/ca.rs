//! The per-agent certificate authority and the leaf certificates minted from it.
//!
//! Keys are ECDSA P-256 (RFC 5480), certificates X.509 v3 (RFC 5280). The CA lives only in
//! this process's memory; its certificate goes to the guest's trust store (agentd). Leaves are
//! minted on demand for each SNI name (or IP address), cached, and backdated one day so that a
//! guest whose clock runs a little behind the host's still accepts them. The guest-side rustls
//! server configs pick those leaves by SNI; `provider()` is the crypto provider of both TLS
//! sides (the upstream side: `upstream::tls`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Validity of the CA certificate from now (plus the one-day backdating).
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of a leaf from now (plus the one-day backdating); re-minted when less than a day
/// is left.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far back `not_before` is set for every certificate.
pub const BACKDATE: Duration = DAY;
/// Leaves kept in the cache; beyond this the cache is emptied (names are re-minted on use).
const CACHE_MAX: usize = 4096;

/// The per-agent certificate authority (generated at startup, never written to disk by the
/// netstack; its certificate goes to the guest trust store).
pub struct Ca {
    cert_pem: String,
    minter: Arc<Minter>,
    /// Guest-side server configs by (ALPN list, name used without SNI): shared so that guest
    /// sessions resume.
    servers: Mutex<HashMap<ServerKey, Arc<ServerConfig>>>,
}

/// (ALPN protocols, name used without SNI).
type ServerKey = (Vec<Vec<u8>>, String);

/// The signing half, shared with the certificate resolvers of the server configs.
struct Minter {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, (SystemTime, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter")
    }
}

/// Picks the leaf by the ClientHello's SNI (RFC 6066 §3), else by the name the flow is known
/// by (resolved host or IP address).
#[derive(Debug)]
struct SniResolver {
    minter: Arc<Minter>,
    fallback: String,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or(&self.fallback);
        match self.minter.leaf(name) {
            Ok(k) => Some(k),
            Err(e) => {
                log::warn!("no certificate for {name:?}: {e}");
                None
            }
        }
    }
}

impl Ca {
    /// Generates a fresh CA for `agent`: ECDSA P-256 key, subject
    /// `CN=ax agent <agent> CA, O=ax`, basicConstraints CA with path length 0 (it signs leaves
    /// only), keyUsage keyCertSign + cRLSign + digitalSignature, valid from one day ago for
    /// [`CA_VALIDITY`]. Errors: key generation or signing failures (not expected).
    pub fn generate(agent: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ax agent {agent} CA"));
        dn.push(DnType::OrganizationName, "ax");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        set_validity(&mut params, now - BACKDATE, now + CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            minter: Arc::new(Minter {
                cert_der: cert.der().clone(),
                issuer: Issuer::new(params, key),
                provider: provider(),
                leaves: Mutex::new(HashMap::new()),
            }),
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM (one `CERTIFICATE` block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.minter.cert_der
    }

    /// The leaf certificate and key for `name` (a DNS name or an IP address literal), minted on
    /// first use and cached: subject CN and subjectAltName = `name` (dNSName or iPAddress,
    /// RFC 5280 §4.2.1.6), extKeyUsage serverAuth, valid from one day ago for
    /// [`LEAF_VALIDITY`]; the chain served is leaf + CA. Names are compared case-insensitively.
    /// Errors: `name` is neither a valid DNS name nor an IP address.
    pub fn leaf(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        self.minter.leaf(name)
    }

    /// The guest-side rustls server config offering `alpn` (RFC 7301), its certificate chosen
    /// by SNI (`fallback` when the guest sends none). TLS 1.2 and 1.3.
    pub fn server_config(
        &self,
        alpn: &[Vec<u8>],
        fallback: &str,
    ) -> anyhow::Result<Arc<ServerConfig>> {
        let key = (alpn.to_vec(), fallback.to_ascii_lowercase());
        let mut servers = self.servers.lock().unwrap();
        if let Some(c) = servers.get(&key) {
            return Ok(c.clone());
        }
        let resolver = SniResolver {
            minter: self.minter.clone(),
            fallback: fallback.to_string(),
        };
        let mut cfg = ServerConfig::builder_with_provider(self.minter.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        cfg.alpn_protocols = alpn.to_vec();
        let cfg = Arc::new(cfg);
        if servers.len() >= CACHE_MAX {
            servers.clear();
        }
        servers.insert(key, cfg.clone());
        Ok(cfg)
    }
}

impl Minter {
    fn leaf(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let now = SystemTime::now();
        if let Some((expires, key)) = self.leaves.lock().unwrap().get(&name) {
            if *expires > now + DAY {
                return Ok(key.clone());
            }
        }
        let (expires, key) = self.mint(&name, now)?;
        let mut leaves = self.leaves.lock().unwrap();
        if leaves.len() >= CACHE_MAX {
            leaves.clear();
        }
        leaves.insert(name, (expires, key.clone()));
        Ok(key)
    }

    fn mint(&self, name: &str, now: SystemTime) -> anyhow::Result<(SystemTime, Arc<CertifiedKey>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(|e| {
            anyhow::anyhow!("cannot mint a certificate for {name:?}: not a DNS name or IP ({e})")
        })?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let expires = now + LEAF_VALIDITY;
        set_validity(&mut params, now - BACKDATE, expires);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = self.provider.key_provider.load_private_key(der)?;
        let chain = vec![cert.der().clone(), self.cert_der.clone()];
        Ok((expires, Arc::new(CertifiedKey::new(chain, signer))))
    }
}

/// The rustls crypto provider used on both sides (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Sets notBefore/notAfter (RFC 5280 §4.1.2.5, whole seconds) from `SystemTime`s, without
/// naming rcgen's time type (epoch + offset).
fn set_validity(params: &mut CertificateParams, from: SystemTime, to: SystemTime) {
    let secs = |t: SystemTime| {
        Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    };
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + secs(from);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + secs(to);
}

/// A positive random 64-bit serial (RFC 5280 §4.1.2.2: unique per CA, ≤ 20 octets).
fn random_serial() -> SerialNumber {
    let mut b = crate::secrets::random_bytes::<8>();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}
