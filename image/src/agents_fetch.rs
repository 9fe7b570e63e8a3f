//! The npm tarball cache: `$XDG_CACHE_HOME/ax/npm/<sha512-hex>.tgz`, content-addressed by the
//! lock's integrity, shared by every build and verified before each use.
//!
//! A missing tarball is fetched with `npm pack <name>@<version>` so that npm's own
//! configuration (npmrc, proxy, registry) decides where it comes from; ax names no registry.
//! The download lands in a temporary directory beside the cache, is hashed (sha512, W3C
//! Subresource Integrity as npm records it), and only a match is renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha512};

use super::agents::NpmPackage;
use super::digest::hex;
use crate::error;

/// sha512 of a file, streamed.
pub fn sha512_file(path: &Path) -> std::io::Result<[u8; 64]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Where `pkg`'s tarball lives in the cache `dir`.
pub fn cached_path(dir: &Path, pkg: &NpmPackage) -> anyhow::Result<PathBuf> {
    Ok(dir.join(format!("{}.tgz", hex(&pkg.sha512()?))))
}

/// Returns the verified tarball of `pkg` from `dir`, fetching it with npm when absent (`npm`
/// finds the program; called only then). A cached file whose hash does not match is deleted
/// and fetched again. `fetched` is called with the spec of each package that had to be
/// downloaded (for progress lines).
pub fn ensure(
    dir: &Path,
    pkg: &NpmPackage,
    npm: &mut dyn FnMut() -> anyhow::Result<PathBuf>,
    log: &Path,
    fetched: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let want = pkg.sha512()?;
    let path = cached_path(dir, pkg)?;
    if path.is_file() {
        if sha512_file(&path).with_context(|| format!("hashing {}", path.display()))? == want {
            return Ok(path);
        }
        // Truncated or tampered: drop it and fetch again.
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    fetched(&pkg.spec());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = TempDir(dir.join(format!(".fetch-{}-{}", std::process::id(), hex(&want[..6]))));
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir(&tmp.0)
        .with_context(|| format!("creating a download directory in {}", dir.display()))?;
    let tgz = npm_pack(&npm()?, pkg, &tmp.0, log)?;
    let got = sha512_file(&tgz)?;
    if got != want {
        return Err(error::runtime(
            format!(
                "{} from npm has sha512 {}…, the agents lock says {}…",
                pkg.spec(),
                &hex(&got)[..16],
                &hex(&want)[..16]
            ),
            "the registry serves other bytes than when the lock was made; check npm's registry config, or regenerate the lock with scripts/lock-agents",
        ));
    }
    std::fs::rename(&tgz, &path)
        .with_context(|| format!("moving {} into the cache", pkg.spec()))?;
    Ok(path)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `npm pack <spec>` in `dest` with a throwaway npm cache (the tarball goes into ours;
/// npm's own cache would hold a second copy of hundreds of MB). Returns the `.tgz` it wrote.
fn npm_pack(npm: &Path, pkg: &NpmPackage, dest: &Path, log: &Path) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(npm);
    cmd.current_dir(dest)
        .args([
            "pack",
            "--loglevel=error",
            "--ignore-scripts",
            "--pack-destination",
        ])
        .arg(dest)
        .arg("--cache")
        .arg(dest.join(".npm-cache"))
        .arg(pkg.spec())
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false");
    if let Err(e) = super::exec::run_logged(&mut cmd, log) {
        let text = format!("{e:#}");
        let last = text
            .lines()
            .find(|l| l.contains("error code"))
            .or_else(|| text.lines().rev().find(|l| l.contains("error")))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| "see the build log".into());
        return Err(error::runtime(
            format!("cannot download {} with `npm pack` ({last})", pkg.spec()),
            "check that npm reaches its registry (`npm ping`; proxy and registry come from npm's config), or build without agents: axctl image build --no-agents",
        ));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dest)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tgz"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => anyhow::bail!("npm pack {} left {} tarballs", pkg.spec(), found.len()),
    }
}

/// Finds `npm` on PATH; missing npm is a usage error naming the package to install.
pub fn find_npm() -> anyhow::Result<PathBuf> {
    super::tools::find("npm").ok_or_else(|| {
        error::usage(
            "npm not found; the agents layer downloads its pinned tarballs with `npm pack`",
            "install it: apt-get install npm (or build without agents: axctl image build --no-agents)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn pkg_for(bytes: &[u8]) -> NpmPackage {
        NpmPackage {
            path: "node_modules/x".into(),
            name: "x".into(),
            version: "1.0.0".into(),
            integrity: format!(
                "sha512-{}",
                base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
            ),
        }
    }

    /// A stand-in `npm` (a shell script) that writes `x-1.0.0.tgz` with the given bytes, or
    /// fails like npm does when the registry is unreachable.
    fn fake_npm(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-npm");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn fetches_verifies_and_reuses() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("npm");
        let log = d.path().join("log");
        let pkg = pkg_for(b"tarball bytes");
        // npm pack writes into --pack-destination (the 5th argument here).
        let npm = fake_npm(
            d.path(),
            "printf 'tarball bytes' > \"$5/x-1.0.0.tgz\"; echo \"$@\" >> \"$0.calls\"",
        );
        let mut seen = Vec::new();
        let p = ensure(&cache, &pkg, &mut || Ok(npm.clone()), &log, &mut |s| {
            seen.push(s.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"tarball bytes");
        assert_eq!(p, cached_path(&cache, &pkg).unwrap());
        assert_eq!(seen, ["x@1.0.0"]);
        // Second use: from the cache, npm not run again.
        ensure(&cache, &pkg, &mut || Ok(npm.clone()), &log, &mut |s| {
            seen.push(s.to_string())
        })
        .unwrap();
        assert_eq!(seen.len(), 1);
        let calls = std::fs::read_to_string(d.path().join("fake-npm.calls")).unwrap();
        assert_eq!(calls.lines().count(), 1);
        assert!(
            calls.contains("pack") && calls.contains("x@1.0.0"),
            "{calls}"
        );
        // A corrupted cache entry is replaced.
        std::fs::write(&p, b"garbage").unwrap();
        ensure(&cache, &pkg, &mut || Ok(npm.clone()), &log, &mut |s| {
            seen.push(s.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"tarball bytes");
        assert_eq!(seen.len(), 2);
        // No leftovers besides the cache entry.
        let names: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn wrong_bytes_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let pkg = pkg_for(b"the real thing");
        let npm = fake_npm(d.path(), "printf 'something else' > \"$5/x-1.0.0.tgz\"");
        let e = ensure(
            &d.path().join("npm"),
            &pkg,
            &mut || Ok(npm.clone()),
            &d.path().join("log"),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("x@1.0.0 from npm has sha512"), "{e}");
        assert_eq!(crate::error::exit_code(&e), 1);
        assert!(!cached_path(&d.path().join("npm"), &pkg).unwrap().exists());
    }

    #[test]
    fn unreachable_registry_names_the_package_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let pkg = pkg_for(b"x");
        let npm = fake_npm(
            d.path(),
            "echo 'npm error code ENOTFOUND' >&2; echo 'npm error network request failed' >&2; exit 1",
        );
        let e = ensure(
            &d.path().join("npm"),
            &pkg,
            &mut || Ok(npm.clone()),
            &d.path().join("log"),
            &mut |_| {},
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("cannot download x@1.0.0 with `npm pack` (npm error code ENOTFOUND)"),
            "{s}"
        );
        assert!(s.contains("npm ping") && s.contains("--no-agents"), "{s}");
        assert_eq!(crate::error::exit_code(&e), 1);
    }

    /// The real npm against a registry that refuses connections (a closed loopback port).
    #[test]
    fn real_npm_with_an_unreachable_registry() {
        let Some(real) = crate::tools::find("npm") else {
            ax_common::testing::skip_missing(
                "real_npm_with_an_unreachable_registry",
                "npm not installed (apt-get install npm; scripts/deps does)",
            );
            return;
        };
        let d = tempfile::tempdir().unwrap();
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let npm = fake_npm(
            d.path(),
            &format!(
                "exec {} \"$@\" --registry=http://127.0.0.1:{port}/ --fetch-retries=0",
                real.display()
            ),
        );
        let pkg = pkg_for(b"never fetched");
        let e = ensure(
            &d.path().join("npm"),
            &pkg,
            &mut || Ok(npm.clone()),
            &d.path().join("log"),
            &mut |_| {},
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("cannot download x@1.0.0 with `npm pack` (npm error code ECONNREFUSED)"),
            "{s}"
        );
        assert_eq!(crate::error::exit_code(&e), 1);
    }
}
