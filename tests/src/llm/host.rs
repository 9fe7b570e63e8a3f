//! Running the pinned agent CLIs on the host (no VM) against a scripted server: finding their
//! native binaries in the agents layer's npm tarball cache and unpacking one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The npm tarball caches to look in: `$AX_TEST_NPM_CACHE`, the tests' image cache
/// ([`crate::cache_home`]`/ax/npm`, filled by the image build), `$XDG_CACHE_HOME/ax/npm`,
/// `~/.cache/ax/npm`.
pub fn npm_caches() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("AX_TEST_NPM_CACHE") {
        v.push(PathBuf::from(p));
    }
    v.push(crate::cache_home().join("ax/npm"));
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        v.push(PathBuf::from(p).join("ax/npm"));
    }
    if let Some(p) = std::env::var_os("HOME") {
        v.push(PathBuf::from(p).join(".cache/ax/npm"));
    }
    v
}

/// Unpacks file `member` (e.g. `package/claude`) of the locked npm package whose lock `path`
/// is `pkg_path` (e.g. `node_modules/@anthropic-ai/claude-code-linux-x64`) into `dest`;
/// returns the unpacked file, or why it cannot (no cached tarball).
pub fn unpack_locked(pkg_path: &str, member: &str, dest: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(crate::agents_lock_path()).map_err(|e| e.to_string())?;
    let lock = ax_image::agents::parse(&text, "agents.lock.toml").map_err(|e| e.to_string())?;
    let pkg = lock
        .runtimes
        .iter()
        .flat_map(|r| r.packages.iter())
        .find(|p| p.path == pkg_path)
        .ok_or_else(|| format!("{pkg_path} is not in the agents lock"))?;
    let caches = npm_caches();
    let tgz = caches
        .iter()
        .filter_map(|d| ax_image::agents_fetch::cached_path(d, pkg).ok())
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{} is not in any npm tarball cache ({}); build the image (axctl image build) or set AX_TEST_NPM_CACHE",
                pkg.spec(),
                caches.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })?;
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(dest)
        .arg(member)
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !st.success() {
        return Err(format!(
            "tar could not unpack {member} from {}",
            tgz.display()
        ));
    }
    Ok(dest.join(member))
}
