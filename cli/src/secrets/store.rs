//! The store file: read with permission checks, changed under a lock, replaced atomically.

use super::{check_name, mask};
use crate::error::usage;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Format version written in the file's `version` key.
pub const VERSION: u32 = 1;

/// `$XDG_CONFIG_HOME/ax/secrets.toml`.
pub fn store_path() -> PathBuf {
    crate::paths::config_dir().join("secrets.toml")
}

/// One stored secret.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The real value.
    pub value: String,
    /// Exact host names the netstack may send it to.
    pub hosts: Vec<String>,
    /// Also substitute it in request bodies.
    #[serde(default)]
    pub body: bool,
    /// Unix seconds when it was added (or last replaced).
    pub added: u64,
    /// Unix seconds of the last run that used it ([`mark_used`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("value", &mask(&self.value))
            .field("hosts", &self.hosts)
            .field("body", &self.body)
            .field("added", &self.added)
            .field("last_used", &self.last_used)
            .finish()
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    #[serde(default, rename = "secret")]
    secrets: BTreeMap<String, Entry>,
}

/// The store's contents (name → entry), as read from one file.
#[derive(Debug, Default)]
pub struct Store {
    pub path: PathBuf,
    pub secrets: BTreeMap<String, Entry>,
}

impl Store {
    /// The default store ([`store_path`]).
    pub fn open() -> Result<Store> {
        Store::open_at(&store_path())
    }

    /// Reads `path`; a missing file is an empty store. Errors (usage): the file or its
    /// directory is accessible to group/others or owned by someone else; it does not parse.
    pub fn open_at(path: &Path) -> Result<Store> {
        let secrets = read(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            secrets,
        })
    }
}

/// Refuses a store file that anyone but its owner (us) can read or write.
fn check_private(path: &Path, meta: &std::fs::Metadata, dir: bool) -> Result<()> {
    let mode = meta.permissions().mode() & 0o777;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(usage(
            format!(
                "{} is owned by uid {}, not by you (uid {euid})",
                path.display(),
                meta.uid()
            ),
            format!(
                "the secret store must be yours: chown {euid} {}",
                path.display()
            ),
        ));
    }
    let (bad, fix) = if dir { (0o022, "700") } else { (0o077, "600") };
    if mode & bad != 0 {
        return Err(usage(
            format!(
                "{} has mode {mode:04o}: other users can {} it",
                path.display(),
                if dir {
                    "replace files in"
                } else {
                    "read or change"
                }
            ),
            format!(
                "restrict it, then check who saw it: chmod {fix} {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn read(path: &Path) -> Result<BTreeMap<String, Entry>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(dir) = path.parent() {
        check_private(dir, &std::fs::metadata(dir)?, true)?;
    }
    check_private(path, &meta, false)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: StoreFile = toml::from_str(&text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| crate::config::line_col(&text, s.start))
            .unwrap_or((1, 1));
        usage(
            format!(
                "{}:{line}:{col}: {}",
                path.display(),
                e.message().trim_end()
            ),
            "fix the file (format: docs/secrets.md) or re-add the secrets",
        )
    })?;
    if f.version != VERSION {
        return Err(usage(
            format!(
                "{}: version {} is not supported (this axctl reads {VERSION})",
                path.display(),
                f.version
            ),
            "use a matching axctl",
        ));
    }
    Ok(f.secrets)
}

/// Read-modify-write of the store at `path` under its lock; `f` edits the map, and the file
/// is rewritten only if `f` succeeds. Creates the directory (0700) and file (0600).
pub fn update<R>(
    path: &Path,
    f: impl FnOnce(&mut BTreeMap<String, Entry>) -> Result<R>,
) -> Result<R> {
    let dir = path.parent().context("store path has no directory")?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_path = path.with_extension("toml.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the secret store");
    }
    let mut map = read(path)?;
    let r = f(&mut map)?;
    write(path, &map)?;
    drop(lock);
    Ok(r)
}

fn write(path: &Path, map: &BTreeMap<String, Entry>) -> Result<()> {
    let text = format!(
        "# ax secret store (docs/secrets.md). Keep it mode 0600; edit with `axctl secrets`.\n{}",
        toml::to_string(&StoreFile {
            version: VERSION,
            secrets: map.clone(),
        })?
    );
    let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}

/// Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records that a run used these stored secrets now (the supervisor calls it once the
/// agent starts). Names not in the store (environment fallbacks) are ignored.
pub fn mark_used(names: &[&str]) -> Result<()> {
    mark_used_at(&store_path(), names)
}

/// [`mark_used`] on the store at `path`.
pub fn mark_used_at(path: &Path, names: &[&str]) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let t = now();
    update(path, |m| {
        for n in names {
            if let Some(e) = m.get_mut(*n) {
                e.last_used = Some(t);
            }
        }
        Ok(())
    })
}

/// Stores (or replaces) `name` in the store at `path`.
pub fn add_at(
    path: &Path,
    name: &str,
    value: String,
    hosts: Vec<String>,
    body: bool,
) -> Result<()> {
    check_name(name)?;
    if value.is_empty() {
        return Err(usage(
            format!("the value for {name} is empty"),
            "pipe the value on stdin",
        ));
    }
    if hosts.is_empty() {
        return Err(usage(
            format!("{name} is bound to no host"),
            format!("say where it may be sent: --host HOST (repeatable); {name} is not a well-known name"),
        ));
    }
    update(path, |m| {
        m.insert(
            name.to_string(),
            Entry {
                value,
                hosts,
                body,
                added: now(),
                last_used: None,
            },
        );
        Ok(())
    })
}

/// Removes `names` from the store at `path`; unknown names are a usage error (and nothing
/// is removed).
pub fn remove_at(path: &Path, names: &[String]) -> Result<()> {
    update(path, |m| {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !m.contains_key(*n))
            .map(|s| s.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(usage(
                format!("no stored secret named {}", unknown.join(", ")),
                "list them with: axctl secrets ls",
            ));
        }
        for n in names {
            m.remove(n);
        }
        Ok(())
    })
}
