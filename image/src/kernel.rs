//! The guest kernel: Debian's cloud kernel at the version pinned in the lock file, fetched with
//! `mmdebstrap --variant=extract` (so it comes from the same apt sources as the rootfs and is
//! verified by apt against the archive keys), then `depmod -b` on the extracted tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::exec;
use super::lock::Lock;
use super::manifest;
use super::modules::{LoadPlan, ModuleDb};
use crate::error;

/// The fetched kernel package, extracted.
#[derive(Debug)]
pub struct Kernel {
    /// `boot/vmlinuz-<release>` (a bzImage).
    pub bzimage: PathBuf,
    /// `uname -r`.
    pub release: String,
    /// sha256 of the `.deb`.
    pub deb_sha256: String,
    /// `…/lib/modules/<release>/` in the extracted tree.
    pub modules_dir: PathBuf,
}

/// apt's file name for a package's `.deb` (`:` in the version becomes `%3a`).
pub fn deb_file_name(package: &str, version: &str, arch: &str) -> String {
    format!("{package}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// Whether mmdebstrap/apt output says the pinned package/version does not exist.
pub fn pin_missing(output: &str) -> bool {
    [
        "was not found",
        "Unable to locate package",
        "has no installation candidate",
    ]
    .iter()
    .any(|s| output.contains(s))
}

/// The error when the mirror lacks the pinned kernel.
pub fn pin_missing_error(lock: &Lock) -> anyhow::Error {
    error::usage(
        format!(
            "the apt sources have no {}={} (the kernel pinned in the lock file)",
            lock.kernel.package, lock.kernel.version
        ),
        "run `apt-get update && apt-cache madison linux-image-cloud-amd64` to see the current \
         version, set [kernel] package, version and release in image/debian.lock.toml, then \
         rebuild axctl or pass --lock FILE",
    )
}

/// Downloads and extracts the pinned kernel into `work/kernel`.
pub fn fetch(
    lock: &Lock,
    sources: &Path,
    work: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<Kernel> {
    let tree = work.join("kernel");
    let pin = format!("{}={}", lock.kernel.package, lock.kernel.version);
    let mut cmd = Command::new(super::tools::path("mmdebstrap"));
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--mode=root")
        .arg("--variant=extract")
        .arg(format!("--include={pin}"))
        .arg("--skip=cleanup/apt/cache")
        .arg(&lock.suite)
        .arg(&tree)
        .arg(sources);
    if let Err(e) = exec::run_logged(&mut cmd, log) {
        if pin_missing(&e.to_string()) {
            return Err(pin_missing_error(lock));
        }
        return Err(e.context(format!("fetching {pin} with mmdebstrap")));
    }

    let deb = tree.join("var/cache/apt/archives").join(deb_file_name(
        &lock.kernel.package,
        &lock.kernel.version,
        "amd64",
    ));
    let deb_sha256 = manifest::sha256_file(&deb)
        .with_context(|| format!("hashing {} (apt's download of the kernel)", deb.display()))?
        .sha256;
    let release = &lock.kernel.release;
    let bzimage = tree.join(format!("boot/vmlinuz-{release}"));
    if !bzimage.is_file() {
        return Err(error::usage(
            format!("{} has no boot/vmlinuz-{release}", lock.kernel.package),
            "[kernel] release in the lock file must match the package (`uname -r` of that kernel)",
        ));
    }
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tree.join(d).join(release))
        .find(|p| p.is_dir())
        .ok_or_else(|| anyhow::anyhow!("{} has no lib/modules/{release}", lock.kernel.package))?;
    // The package ships no modules.dep: generate it (and modules.softdep) for this tree.
    exec::run_logged(
        Command::new(super::tools::path("depmod"))
            .arg("-b")
            .arg(&tree)
            .arg(release),
        log,
    )
    .context("depmod on the extracted kernel")?;
    Ok(Kernel {
        bzimage,
        release: release.clone(),
        deb_sha256,
        modules_dir,
    })
}

/// Reads depmod's output for `kernel` and plans the module list for `wanted`.
pub fn plan_modules(kernel: &Kernel, wanted: &[String]) -> anyhow::Result<LoadPlan> {
    let read = |f: &str| std::fs::read_to_string(kernel.modules_dir.join(f));
    let dep = read("modules.dep").context("reading modules.dep")?;
    let db = ModuleDb::parse(&dep)
        .with_softdeps(&read("modules.softdep").unwrap_or_default())
        .with_builtin(&read("modules.builtin").unwrap_or_default());
    db.load_plan(wanted).map_err(|e| {
        error::usage(
            format!("kernel {}: {e}", kernel.release),
            "check [kernel] modules in the lock file (names as in `modinfo -n`, e.g. virtio_net)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_names() {
        assert_eq!(
            deb_file_name("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64"),
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
        );
        assert_eq!(
            deb_file_name("zlib1g", "1:1.2.13", "amd64"),
            "zlib1g_1%3a1.2.13_amd64.deb"
        );
    }

    #[test]
    fn missing_pin_is_recognised_and_explained() {
        assert!(pin_missing(
            "E: Version '6.1.999-1' for 'linux-image-6.1.0-56-cloud-amd64' was not found"
        ));
        assert!(pin_missing("E: Unable to locate package linux-image-9"));
        assert!(!pin_missing("E: Failed to fetch"));
        let lock = super::super::lock::parse(super::super::lock::EMBEDDED, "t").unwrap();
        let e = pin_missing_error(&lock);
        assert_eq!(crate::error::exit_code(&e), 2);
        let s = e.to_string();
        assert!(
            s.contains("6.1.192-2") && s.contains("apt-cache madison") && s.contains("--lock"),
            "{s}"
        );
    }
}
