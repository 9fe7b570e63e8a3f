//! `image/debian.lock.toml`: the pins of the Debian image path (suite, kernel package and
//! version, module list, rootfs package list, default SOURCE_DATE_EPOCH, erofs UUID).

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::error;

/// The lock file shipped with this axctl (embedded at compile time).
pub const EMBEDDED: &str = include_str!("../debian.lock.toml");

/// Parsed lock file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version of the lock file (1).
    pub schema: u32,
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Default SOURCE_DATE_EPOCH when the environment sets none.
    pub source_date_epoch: u64,
    /// The pinned kernel.
    pub kernel: KernelPin,
    /// The rootfs recipe.
    pub rootfs: RootfsPin,
}

/// `[kernel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Binary package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Exact Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Modules agentd needs (names); dependencies are added.
    pub modules: Vec<String>,
}

/// `[rootfs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsPin {
    /// mmdebstrap variant (`minbase`, `apt`, `essential`, …).
    pub variant: String,
    /// Packages installed on top of the variant.
    pub packages: Vec<String>,
    /// Filesystem UUID given to mkfs.erofs.
    pub erofs_uuid: String,
    /// mkfs.erofs compressor (`none` or e.g. `lz4hc`).
    pub compression: String,
}

/// A lock file and the bytes it was read from (their sha256 goes into the manifest).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed pins.
    pub lock: Lock,
    /// The raw text.
    pub text: String,
    /// Where it came from: a path, or `embedded`.
    pub origin: String,
}

/// Parses lock file text, checking the fields the build relies on.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Lock> {
    let lock: Lock = toml::from_str(text).map_err(|e| {
        error::usage(
            format!("{origin}: invalid lock file: {e}"),
            "compare it with image/debian.lock.toml in the ax source tree",
        )
    })?;
    if lock.schema != 1 {
        return Err(error::usage(
            format!(
                "{origin}: lock schema {} is not supported (this axctl reads 1)",
                lock.schema
            ),
            "use the image/debian.lock.toml that matches this axctl",
        ));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
    };
    let mut names: Vec<&str> = vec![&lock.suite, &lock.kernel.package, &lock.kernel.version];
    names.extend(lock.rootfs.packages.iter().map(String::as_str));
    names.push(&lock.rootfs.variant);
    if let Some(bad) = names.into_iter().find(|s| !plain(s)) {
        return Err(error::usage(
            format!("{origin}: {bad:?} is not a valid Debian suite/package/version"),
            "package names and versions use letters, digits and + - . : ~ _",
        ));
    }
    Ok(lock)
}

/// Loads `path`, or the embedded lock file when `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    match path {
        None => Ok(Loaded {
            lock: parse(EMBEDDED, "embedded lock file")?,
            text: EMBEDDED.into(),
            origin: "embedded".into(),
        }),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map_err(|e| error::usage(format!("{e:#}"), "pass an existing file to --lock"))?;
            let origin = p.display().to_string();
            Ok(Loaded {
                lock: parse(&text, &origin)?,
                text,
                origin,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lock_parses() {
        let l = parse(EMBEDDED, "embedded").unwrap();
        assert_eq!(l.suite, "bookworm");
        assert!(l.kernel.package.ends_with(&l.kernel.release));
        assert!(l.kernel.modules.iter().any(|m| m == "virtiofs"));
        assert!(l.rootfs.packages.iter().any(|p| p == "git"));
    }

    #[test]
    fn bad_lock_is_a_usage_error() {
        let e = parse("schema = 2\n", "x").unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        let bad = EMBEDDED.replace("\"git\"", "\"git; rm -rf /\"");
        let e = parse(&bad, "x").unwrap_err();
        assert!(e.to_string().contains("not a valid"), "{e}");
    }
}
