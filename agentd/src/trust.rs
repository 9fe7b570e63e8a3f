//! The agent's CA in the guest trust store (SETUP's `ca_pem`, `docs/network.md`).
//!
//! ax-netstack terminates TLS to intercepted hosts with a per-agent CA; programs in the guest
//! must trust it. The certificate is written to [`CA_FILE`] and appended to the Debian bundle
//! [`BUNDLE`] (which OpenSSL, GnuTLS, curl, git, Python and `update-ca-certificates` users
//! read), and every later session gets `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
//! `CODEX_CA_CERTIFICATE` (the bundle) and `NODE_EXTRA_CA_CERTS` (the CA alone: Node.js adds
//! it to its built-in roots). `update-ca-certificates` is not run: it takes seconds under
//! TCG and the append is what it would do.

use agentd::proto::Setup;
use std::collections::BTreeMap;
use std::path::Path;

/// Where the CA certificate alone goes (the Debian place for local CAs).
pub const CA_FILE: &str = "/usr/local/share/ca-certificates/ax-netstack-ca.crt";
/// The system bundle it is appended to.
pub const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The server's SETUP hook: installs `ca_pem` (if any) and returns the environment for later
/// sessions. Errors: not a PEM certificate, or the files cannot be written.
pub fn setup_hook(s: &Setup) -> Result<BTreeMap<String, String>, String> {
    match &s.ca_pem {
        Some(pem) => install(pem, Path::new(CA_FILE), Path::new(BUNDLE)),
        None => Ok(BTreeMap::new()),
    }
}

/// Writes `pem` to `ca_file`, appends it to `bundle` unless it is there already (a repeated
/// SETUP), and returns the environment pointing at both.
pub fn install(
    pem: &str,
    ca_file: &Path,
    bundle: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let pem = pem.trim();
    if !pem.starts_with("-----BEGIN CERTIFICATE-----")
        || !pem.ends_with("-----END CERTIFICATE-----")
    {
        return Err("ca_pem is not a PEM certificate (-----BEGIN CERTIFICATE----- …)".into());
    }
    let err = |p: &Path, e: std::io::Error| format!("cannot write {}: {e}", p.display());
    if let Some(dir) = ca_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    }
    std::fs::write(ca_file, format!("{pem}\n")).map_err(|e| err(ca_file, e))?;
    let mut all = std::fs::read_to_string(bundle).unwrap_or_default();
    if !all.contains(pem) {
        if !all.is_empty() && !all.ends_with('\n') {
            all.push('\n');
        }
        all.push_str(&format!("# ax-netstack: this agent's CA\n{pem}\n"));
        if let Some(dir) = bundle.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        }
        std::fs::write(bundle, all).map_err(|e| err(bundle, e))?;
    }
    let b = bundle.display().to_string();
    Ok(BTreeMap::from([
        ("SSL_CERT_FILE".to_string(), b.clone()),
        ("REQUESTS_CA_BUNDLE".to_string(), b.clone()),
        ("CODEX_CA_CERTIFICATE".to_string(), b),
        (
            "NODE_EXTRA_CA_CERTS".to_string(),
            ca_file.display().to_string(),
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn installs_once_and_sets_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("local/ax.crt");
        let bundle = d.path().join("certs/bundle.crt");
        std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
        std::fs::write(
            &bundle,
            "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let env = install(PEM, &ca, &bundle).unwrap();
        install(PEM, &ca, &bundle).unwrap();
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), PEM);
        let b = std::fs::read_to_string(&bundle).unwrap();
        assert!(
            b.starts_with(
                "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n# ax-netstack"
            ),
            "{b}"
        );
        assert_eq!(b.matches("MIIB").count(), 1, "appended once: {b}");
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], ca.display().to_string());
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CODEX_CA_CERTIFICATE",
        ] {
            assert_eq!(env[k], bundle.display().to_string());
        }
        assert!(install("not a cert", &ca, &bundle).is_err());
    }
}
