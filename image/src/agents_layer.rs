//! The agents layer: the pinned npm packages of the selected runtimes unpacked (scripts never
//! run) into a staging tree, the install steps the wrappers' postinstall scripts would do,
//! `bin/` symlinks, then `mkfs.erofs` with fixed time, UUID and owners → `agents.erofs`, which
//! agentd mounts read-only on `/opt/ax`.
//!
//! Tree (paths inside the layer):
//!
//! ```text
//! bin/<command> -> ../<runtime>/<bin file>        e.g. bin/claude, bin/node
//! <runtime>/node_modules/<package>/…              one tree per runtime, npm's layout
//! ```
//!
//! Tarballs are unpacked the way npm's pacote does: the first path component is stripped,
//! links and special files are skipped, modes become `(mode | 0666) & ~022` for files and 0755
//! for directories, and the files named by `package.json` `bin` get the execute bits.
//!
//! Built layers are cached in `<images>/.layers/agents-<key>.erofs`, keyed by everything that
//! shapes their bytes ([`layer_key`]), and hardlinked into each image that uses them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::agents::{AgentsLock, NpmPackage, Place, Runtime};
use super::digest::{self, Output};
use super::{agents_fetch, exec};

/// The layer's file name inside an image directory.
pub const FILE: &str = "agents.erofs";
/// Where agentd mounts it in the guest (its `bin/` goes first on agent processes' `PATH`).
pub const MOUNT_POINT: &str = "/opt/ax";
/// Version of the layout code; part of the cache key (bump when the tree's shape changes).
const LAYOUT_VERSION: u32 = 1;

/// The manifest's `agents` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentsInfo {
    /// sha256 of the agents lock file's bytes.
    pub lock_sha256: String,
    /// mkfs.erofs compression.
    pub compression: String,
    /// Filesystem UUID.
    pub uuid: String,
    /// The runtimes in the layer, in lock order.
    pub runtimes: Vec<RuntimeInfo>,
}

/// One runtime in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Runtime name.
    pub name: String,
    /// Version of its main package.
    pub version: String,
    /// Commands it puts into `/opt/ax/bin`.
    pub bins: Vec<String>,
    /// Install steps run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub place: Vec<Place>,
    /// Every package unpacked, with its integrity.
    pub packages: Vec<NpmPackage>,
}

/// The manifest section for `runtimes` of `lock`.
pub fn info(lock: &AgentsLock, lock_text: &str, runtimes: &[&Runtime]) -> AgentsInfo {
    AgentsInfo {
        lock_sha256: digest::sha256_bytes(lock_text.as_bytes()),
        compression: lock.compression.clone(),
        uuid: lock.erofs_uuid.clone(),
        runtimes: runtimes
            .iter()
            .map(|r| RuntimeInfo {
                name: r.name.clone(),
                version: r.version.clone(),
                bins: r.bins.keys().cloned().collect(),
                place: r.place.clone(),
                packages: r.packages.clone(),
            })
            .collect(),
    }
}

/// The cache key of a layer: sha256 (first 16 hex digits) over the layout version, the lock's
/// bytes, the runtime names, SOURCE_DATE_EPOCH and the erofs-utils version.
pub fn layer_key(lock_text: &str, runtimes: &[&Runtime], epoch: u64, mkfs_version: &str) -> String {
    let names: Vec<&str> = runtimes.iter().map(|r| r.name.as_str()).collect();
    let text = format!(
        "ax agents layer {LAYOUT_VERSION}\nlock {}\nruntimes {}\nepoch {epoch}\nerofs-utils {mkfs_version}\n",
        digest::sha256_bytes(lock_text.as_bytes()),
        names.join(",")
    );
    digest::sha256_bytes(text.as_bytes())[..16].to_string()
}

fn safe_rel(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Unpacks the npm tarball `tgz` into `dest` as npm's pacote does (module docs).
pub fn unpack(tgz: &Path, dest: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::open(tgz).with_context(|| format!("opening {}", tgz.display()))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    mkdir(dest)?;
    for entry in ar
        .entries()
        .with_context(|| format!("reading {}", tgz.display()))?
    {
        let mut e = entry.with_context(|| format!("reading {}", tgz.display()))?;
        let path = e.path()?.into_owned();
        let rel: PathBuf = path.components().skip(1).collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        if !safe_rel(&rel) {
            anyhow::bail!("{}: unsafe path {}", tgz.display(), path.display());
        }
        let target = dest.join(&rel);
        let mode = e.header().mode().unwrap_or(0o644);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                mkdir(&target)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    mkdir(parent)?;
                }
                if target.is_dir() {
                    std::fs::remove_dir_all(&target)?;
                }
                let mut out = std::fs::File::create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                std::io::copy(&mut e, &mut out)
                    .with_context(|| format!("writing {}", target.display()))?;
                let m = ((mode | 0o666) & !0o022) | 0o600;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m & 0o777))?;
            }
            // Symlinks, hardlinks, devices: npm skips them.
            _ => {}
        }
    }
    make_bins_executable(dest)
}

/// Creates `dir` and its parents with mode 0755 (independent of the umask).
fn mkdir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent() {
        mkdir(p)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("creating {}", dir.display()))
        }
        _ => {}
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Adds the execute bits to every file `package.json`'s `bin` names (npm does this on unpack).
fn make_bins_executable(pkg_dir: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(pkg_dir.join("package.json")) else {
        return Ok(());
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let bins: Vec<&str> = match &v["bin"] {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Object(m) => m.values().filter_map(|x| x.as_str()).collect(),
        _ => Vec::new(),
    };
    for b in bins {
        let rel = Path::new(b.trim_start_matches("./"));
        let p = pkg_dir.join(rel);
        if safe_rel(rel) && p.is_file() {
            chmod_x(&p)?;
        }
    }
    Ok(())
}

fn chmod_x(p: &Path) -> anyhow::Result<()> {
    let m = std::fs::metadata(p)?.permissions().mode();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode((m | 0o111) & 0o7777))
        .with_context(|| format!("chmod +x {}", p.display()))
}

/// Lays out `runtimes` in `root` from their verified tarballs (`tarball(pkg)` gives the path):
/// unpack every package, run the install steps, link the commands into `root/bin`.
pub fn stage(
    root: &Path,
    runtimes: &[&Runtime],
    tarball: &dyn Fn(&NpmPackage) -> anyhow::Result<PathBuf>,
) -> anyhow::Result<()> {
    mkdir(&root.join("bin"))?;
    for r in runtimes {
        let dir = root.join(&r.name);
        for p in &r.packages {
            unpack(&tarball(p)?, &dir.join(&p.path))
                .with_context(|| format!("unpacking {}", p.spec()))?;
        }
        for step in &r.place {
            let (from, to) = (dir.join(&step.from), dir.join(&step.to));
            if !from.is_file() {
                anyhow::bail!(
                    "{}: install step source {} is not in its package",
                    r.name,
                    step.from
                );
            }
            if let Some(parent) = to.parent() {
                mkdir(parent)?;
            }
            let _ = std::fs::remove_file(&to);
            std::fs::hard_link(&from, &to)
                .with_context(|| format!("{}: linking {} to {}", r.name, step.from, step.to))?;
            std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o755))?;
        }
        for (cmd, file) in &r.bins {
            let target = dir.join(file);
            if !target.is_file() {
                anyhow::bail!("{}: bin {cmd} → {file} is not in its packages", r.name);
            }
            chmod_x(&target)?;
            let link = root.join("bin").join(cmd);
            if link.symlink_metadata().is_ok() {
                anyhow::bail!("command {cmd} is provided by two runtimes");
            }
            std::os::unix::fs::symlink(Path::new("..").join(&r.name).join(file), &link)
                .with_context(|| format!("linking bin/{cmd}"))?;
        }
    }
    Ok(())
}

/// `mkfs.erofs` of the staged tree: fixed timestamp, UUID, root owners, no xattrs (the
/// builder's xattrs, e.g. SELinux labels, must not leak in).
pub fn mkfs(
    lock: &AgentsLock,
    root: &Path,
    out: &Path,
    epoch: u64,
    log: &Path,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(super::tools::path("mkfs.erofs"));
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--quiet")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{}", lock.erofs_uuid))
        .arg("--all-root")
        .arg("-x-1");
    if lock.compression != "none" {
        cmd.arg(format!("-z{}", lock.compression));
    }
    cmd.arg(out).arg(root);
    exec::run_logged(&mut cmd, log).context("mkfs.erofs (agents layer)")?;
    Ok(())
}

/// What a layer build needs.
pub struct LayerJob<'a> {
    /// The parsed lock and its text.
    pub lock: &'a AgentsLock,
    /// Lock text (hashed into the key).
    pub lock_text: &'a str,
    /// The runtimes to include (non-empty).
    pub runtimes: &'a [&'a Runtime],
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Layer cache directory (`<images>/.layers`).
    pub layers_dir: &'a Path,
    /// Tarball cache (`$XDG_CACHE_HOME/ax/npm`).
    pub npm_cache: &'a Path,
    /// Scratch space (the build's work dir).
    pub work: &'a Path,
    /// Tool output log.
    pub log: &'a Path,
    /// erofs-utils version (part of the key).
    pub mkfs_version: &'a str,
}

/// A layer ready to be linked into an image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The cached file.
    pub path: PathBuf,
    /// Its hash and size.
    pub output: Output,
    /// Whether it came from the cache.
    pub reused: bool,
}

/// Returns the cached layer for `job`, building it first when absent. `note` receives
/// progress lines (downloads).
pub fn build_or_reuse(job: &LayerJob, note: &mut dyn FnMut(&str)) -> anyhow::Result<Layer> {
    let key = layer_key(job.lock_text, job.runtimes, job.epoch, job.mkfs_version);
    let path = job.layers_dir.join(format!("agents-{key}.erofs"));
    let sidecar = job.layers_dir.join(format!("agents-{key}.json"));
    if let (Ok(meta), Ok(text)) = (std::fs::metadata(&path), std::fs::read_to_string(&sidecar)) {
        if let Ok(output) = serde_json::from_str::<Output>(&text) {
            if output.size == meta.len() {
                return Ok(Layer {
                    path,
                    output,
                    reused: true,
                });
            }
        }
    }
    std::fs::create_dir_all(job.layers_dir)?;
    let mut fetched = Vec::new();
    let mut tarballs = std::collections::HashMap::new();
    let mut npm = agents_fetch::find_npm;
    for r in job.runtimes {
        for p in &r.packages {
            let t = agents_fetch::ensure(job.npm_cache, p, &mut npm, job.log, &mut |s| {
                fetched.push(s.to_string())
            })?;
            for s in fetched.drain(..) {
                note(&format!("downloaded {s}"));
            }
            tarballs.insert(p.integrity.clone(), t);
        }
    }
    let tree = job.work.join("agents");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    stage(&tree, job.runtimes, &|p| {
        tarballs
            .get(&p.integrity)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} was not fetched", p.spec()))
    })?;
    let tmp = job
        .layers_dir
        .join(format!(".agents-{key}.{}.tmp", std::process::id()));
    mkfs(job.lock, &tree, &tmp, job.epoch, job.log)?;
    std::fs::remove_dir_all(&tree)?;
    let output = digest::sha256_file(&tmp)?;
    std::fs::rename(&tmp, &path)?;
    std::fs::write(&sidecar, serde_json::to_string(&output)?)?;
    prune_unused(job.layers_dir, Some(&path));
    Ok(Layer {
        path,
        output,
        reused: false,
    })
}

/// Removes cached layers in `dir` (other than `keep`) that no image links to any more (link
/// count 1), with their `.json`. Runs after a new layer is built and on `axctl image rm|prune`.
pub fn prune_unused(dir: &Path, keep: Option<&Path>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if Some(p.as_path()) == keep || !name.starts_with("agents-") || !name.ends_with(".erofs") {
            continue;
        }
        if std::fs::metadata(&p).is_ok_and(|m| m.nlink() == 1) {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(p.with_extension("json"));
        }
    }
}

/// Puts the layer into the image's output dir as `agents.erofs` (a hardlink; a copy across
/// file systems).
pub fn install_into(layer: &Layer, out_dir: &Path) -> anyhow::Result<()> {
    let dest = out_dir.join(FILE);
    let _ = std::fs::remove_file(&dest);
    if std::fs::hard_link(&layer.path, &dest).is_err() {
        std::fs::copy(&layer.path, &dest)
            .with_context(|| format!("copying {} into the image", layer.path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
