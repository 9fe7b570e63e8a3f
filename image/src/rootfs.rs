//! The root filesystem: `mmdebstrap` of the lock file's suite, variant and packages into a
//! directory, cleaned of everything host- or time-dependent, then `mkfs.erofs` with a fixed
//! timestamp and UUID. The guest mounts it read-only under a tmpfs overlay.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::exec;
use super::lock::Lock;
use super::manifest::{self, Package, RootfsInfo};

/// Runs mmdebstrap into `work/rootfs`; returns the tree and what got installed.
///
/// Debs are kept (`--skip=essential/unlink,cleanup/apt/cache`) just long enough to hash them
/// for the manifest, then deleted with the rest of apt's cache.
pub fn debootstrap(
    lock: &Lock,
    sources: &Path,
    work: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<(PathBuf, Vec<Package>)> {
    let root = work.join("rootfs");
    let mut cmd = Command::new(super::tools::path("mmdebstrap"));
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--mode=root")
        .arg(format!("--variant={}", lock.rootfs.variant))
        .arg(format!("--include={}", lock.rootfs.packages.join(",")))
        .arg("--skip=essential/unlink")
        .arg("--skip=cleanup/apt/cache")
        .arg(&lock.suite)
        .arg(&root)
        .arg(sources);
    exec::run_logged(&mut cmd, log).context("mmdebstrap (rootfs)")?;

    let archives = root.join("var/cache/apt/archives");
    let mut debs = Vec::new();
    for e in
        std::fs::read_dir(&archives).with_context(|| format!("reading {}", archives.display()))?
    {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") {
            debs.push((name, manifest::sha256_file(&e.path())?.sha256));
        }
    }
    let q = exec::output(
        Command::new(super::tools::path("dpkg-query"))
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .arg("-W")
            .arg("-f=${Package}\t${Version}\t${Architecture}\n"),
    )?;
    let packages = manifest::packages_from_dpkg(&q, &debs);
    scrub(&root)?;
    Ok((root, packages))
}

fn remove_children(dir: &Path, keep_dirs: bool) -> std::io::Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            if keep_dirs {
                remove_children(&e.path(), true)?;
            } else {
                std::fs::remove_dir_all(e.path())?;
            }
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Removes caches, logs and host-specific files from a bootstrapped tree (mmdebstrap already
/// empties /etc/machine-id, apt lists, /tmp and ldconfig's aux-cache).
pub fn scrub(root: &Path) -> anyhow::Result<()> {
    // apt's downloaded debs and binary caches: large and useless without lists.
    remove_children(&root.join("var/cache/apt"), false)?;
    std::fs::create_dir_all(root.join("var/cache/apt/archives/partial"))?;
    remove_children(&root.join("var/lib/apt/lists"), false)?;
    std::fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
    // Logs (dpkg.log, apt/*.log, alternatives.log) hold wall-clock times; keep the dirs.
    remove_children(&root.join("var/log"), true)?;
    for f in ["var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id"] {
        let _ = std::fs::remove_file(root.join(f));
    }
    if let Ok(rd) = std::fs::read_dir(root.join("etc/ssh")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    // mmdebstrap copies the host's resolv.conf and hostname in; agentd writes the guest's.
    std::fs::write(root.join("etc/machine-id"), b"")?;
    std::fs::write(root.join("etc/resolv.conf"), b"")?;
    std::fs::write(root.join("etc/hostname"), b"ax\n")?;
    Ok(())
}

/// `mkfs.erofs` of `root` into `out`: every timestamp `epoch`, a fixed UUID.
pub fn mkfs_erofs(
    lock: &Lock,
    root: &Path,
    out: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(super::tools::path("mkfs.erofs"));
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--quiet")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{}", lock.rootfs.erofs_uuid));
    if lock.rootfs.compression != "none" {
        cmd.arg(format!("-z{}", lock.rootfs.compression));
    }
    cmd.arg(out).arg(root);
    exec::run_logged(&mut cmd, log).context("mkfs.erofs")?;
    Ok(())
}

/// The manifest's rootfs section.
pub fn info(lock: &Lock, packages: Vec<Package>) -> RootfsInfo {
    RootfsInfo {
        variant: lock.rootfs.variant.clone(),
        requested: lock.rootfs.packages.clone(),
        packages,
        compression: lock.rootfs.compression.clone(),
        uuid: lock.rootfs.erofs_uuid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_host_and_time_dependent_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "var/cache/apt/archives/bash_5_amd64.deb",
            "var/cache/apt/pkgcache.bin",
            "var/lib/apt/lists/x_Packages",
            "var/log/apt/history.log",
            "var/log/dpkg.log",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/sshd_config",
            "etc/resolv.conf",
            "etc/hostname",
            "etc/machine-id",
            "var/cache/ldconfig/aux-cache",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), b"host stuff").unwrap();
        }
        scrub(r).unwrap();
        assert!(!r.join("var/cache/apt/archives/bash_5_amd64.deb").exists());
        assert!(r.join("var/cache/apt/archives/partial").is_dir());
        assert!(!r.join("var/cache/apt/pkgcache.bin").exists());
        assert!(!r.join("var/lib/apt/lists/x_Packages").exists());
        assert!(r.join("var/log/apt").is_dir());
        assert!(!r.join("var/log/apt/history.log").exists());
        assert!(!r.join("var/log/dpkg.log").exists());
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(std::fs::read(r.join("etc/resolv.conf")).unwrap(), b"");
        assert_eq!(std::fs::read(r.join("etc/hostname")).unwrap(), b"ax\n");
        assert!(!r.join("var/cache/ldconfig/aux-cache").exists());
    }
}
