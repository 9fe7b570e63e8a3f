//! The secret store: `$XDG_CONFIG_HOME/ax/secrets.toml` (format: `docs/secrets.md`).
//!
//! The file is mode 0600 in a 0700 directory, replaced atomically (write + fsync + rename)
//! under an exclusive `flock` on `secrets.toml.lock`, so concurrent `axctl secrets` and
//! supervisors recording use never lose an update. A store readable or writable by anyone
//! but its owner is refused with a fix-it error rather than used.
//!
//! [`resolve`] is the lookup for the supervisor: stored values first, then `axctl`'s own
//! environment for the well-known names ([`known_hosts`]), each bound to hosts.

use crate::agents::SecretReq;
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

/// Hosts a well-known secret name is bound to when it comes from the environment or from
/// `secrets import` / `secrets add` without `--host`.
pub fn known_hosts(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "ANTHROPIC_API_KEY" => &["api.anthropic.com"],
        "OPENAI_API_KEY" => &["api.openai.com"],
        "GEMINI_API_KEY" | "GOOGLE_API_KEY" => &["generativelanguage.googleapis.com"],
        "GITHUB_TOKEN" | "GH_TOKEN" => &["github.com", "api.github.com"],
        _ => return None,
    })
}

/// Providers for `axctl accounts`: name and the credential names it uses, in preference order.
pub const PROVIDERS: &[(&str, &[&str])] = &[
    ("anthropic", &["ANTHROPIC_API_KEY"]),
    ("openai", &["OPENAI_API_KEY"]),
    ("google", &["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
    ("github", &["GITHUB_TOKEN", "GH_TOKEN"]),
];

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
            .map(|s| crate::agents::def::line_col(&text, s.start))
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

/// A masked value for display: a recognisable lowercase prefix such as `sk-ant-` or `ghp_`
/// (only when the value is at least 16 characters), `…`, and the last 4 characters (only
/// when the value is at least 16 characters; shorter values show nothing of themselves).
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 16 {
        return "…".into();
    }
    // Leading segments of lowercase letters each ending in '-' or '_', at most 12 chars.
    let mut prefix_len = 0;
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        while i < chars.len() && chars[i].is_ascii_lowercase() {
            i += 1;
        }
        if i == start || i >= chars.len() || !(chars[i] == '-' || chars[i] == '_') || i + 1 > 12 {
            break;
        }
        i += 1;
        prefix_len = i;
    }
    let prefix: String = chars[..prefix_len].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// Where a resolved secret's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The store.
    Stored,
    /// `axctl`'s environment (well-known names only).
    Environment,
}

/// A secret ready for the netstack's `[[secret]]`: name, real value, bound hosts, body flag,
/// plus the guest variable that holds its placeholder.
#[derive(Clone)]
pub struct ResolvedSecret {
    pub name: String,
    pub value: String,
    pub hosts: Vec<String>,
    pub body: bool,
    /// The guest environment variable (the requirement's `env`).
    pub env: String,
    pub origin: Origin,
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret")
            .field("name", &self.name)
            .field("value", &mask(&self.value))
            .field("hosts", &self.hosts)
            .field("body", &self.body)
            .field("env", &self.env)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Looks one name up: the store, then (for well-known names) the environment via `env`.
/// The hosts are the store's binding, or the well-known binding for environment values.
pub fn lookup(
    store: &Store,
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Option<(Origin, Entry)> {
    if let Some(e) = store.secrets.get(name) {
        return Some((Origin::Stored, e.clone()));
    }
    let hosts = known_hosts(name)?;
    let value = env(name).filter(|v| !v.is_empty())?;
    Some((
        Origin::Environment,
        Entry {
            value,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            body: false,
            added: 0,
            last_used: None,
        },
    ))
}

/// Resolves an agent's secret requirements from the default store and the process
/// environment (see [`resolve_with`]).
pub fn resolve(reqs: &[SecretReq]) -> Result<Vec<ResolvedSecret>> {
    resolve_with(&Store::open()?, &|n| std::env::var(n).ok(), reqs)
}

/// Resolves `reqs`: each from the store, else from `env` if the name is well known
/// ([`known_hosts`]). A secret is only ever bound to the store's hosts or the well-known
/// ones, never to hosts a definition names (a repository's definition must not be able to
/// send your token elsewhere). Missing optional secrets are skipped; missing required ones
/// are one usage error naming the `axctl secrets add` commands that fix it.
pub fn resolve_with(
    store: &Store,
    env: &dyn Fn(&str) -> Option<String>,
    reqs: &[SecretReq],
) -> Result<Vec<ResolvedSecret>> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for r in reqs {
        match lookup(store, env, &r.name) {
            Some((origin, e)) => out.push(ResolvedSecret {
                name: r.name.clone(),
                value: e.value,
                hosts: e.hosts,
                body: e.body || r.body,
                env: r.env_var().to_string(),
                origin,
            }),
            None if r.optional => {}
            None => missing.push(r),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let names: Vec<&str> = missing.iter().map(|r| r.name.as_str()).collect();
    let fixes: Vec<String> = missing
        .iter()
        .map(|r| {
            let hosts: Vec<String> = if r.hosts.is_empty() {
                vec!["HOST".into()]
            } else {
                r.hosts.clone()
            };
            let flags: Vec<String> = hosts.iter().map(|h| format!("--host {h}")).collect();
            format!(
                "axctl secrets add {} {} (value on stdin)",
                r.name,
                flags.join(" ")
            )
        })
        .collect();
    Err(usage(
        format!(
            "secret {} is not stored{}",
            names.join(", "),
            if missing.iter().all(|r| known_hosts(&r.name).is_some()) {
                " and not in axctl's environment"
            } else {
                ""
            }
        ),
        format!("add it: {}", fixes.join("; ")),
    ))
}

/// Checks a secret name: `[A-Za-z_][A-Za-z0-9_]*` (an environment variable name).
pub fn check_name(name: &str) -> Result<()> {
    let ok = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if ok && !name.is_empty() && name.len() <= 128 {
        Ok(())
    } else {
        Err(usage(
            format!("invalid secret name {name:?}"),
            "use an environment variable name: letters, digits and '_', not starting with a digit",
        ))
    }
}

/// Checks and lowercases host names (`--host`): exact DNS names, no scheme, port or wildcard.
pub fn check_hosts(hosts: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts {
        let l = h.trim().to_ascii_lowercase();
        if !crate::agents::def::valid_host(&l) {
            return Err(usage(
                format!("--host {h:?} is not a host name"),
                "give the exact name the secret may be sent to, e.g. --host api.example.com (no https://, port, path or *)",
            ));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn req(name: &str, optional: bool) -> SecretReq {
        SecretReq {
            name: name.into(),
            hosts: vec!["api.example.com".into()],
            env: None,
            optional,
            body: false,
        }
    }

    fn store() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ax/secrets.toml");
        (d, p)
    }

    #[test]
    fn masks_show_prefix_and_at_most_four_chars() {
        assert_eq!(mask("sk-ant-api03-AAAAAAAAAAAAAAAAf3a9"), "sk-ant-…f3a9");
        assert_eq!(mask("ghp_0123456789abcdefWXYZ"), "ghp_…WXYZ");
        assert_eq!(
            mask("github_pat_11ABCDEFG0123456789_zz12"),
            "github_pat_…zz12"
        );
        assert_eq!(mask("AIzaSyA-0123456789abcdef"), "…cdef");
        assert_eq!(mask("short-secret"), "…");
        assert_eq!(mask(""), "…");
        // A long lowercase word is no prefix: it would give the secret away.
        assert_eq!(mask("abcdefghijklmnopqrstuv-wxyz1234"), "…1234");
    }

    #[test]
    fn add_writes_0600_in_0700_and_round_trips() {
        let (_d, p) = store();
        add_at(
            &p,
            "K",
            "v4lue-123".into(),
            vec!["api.example.com".into()],
            true,
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let s = Store::open_at(&p).unwrap();
        let e = &s.secrets["K"];
        assert_eq!(
            (e.value.as_str(), e.hosts.as_slice(), e.body),
            ("v4lue-123", &["api.example.com".to_string()][..], true)
        );
        assert!(!format!("{e:?}").contains("v4lue-123"));
        mark_used_at(&p, &["K", "nope"]).unwrap();
        assert!(Store::open_at(&p).unwrap().secrets["K"].last_used.is_some());
        remove_at(&p, &["K".into()]).unwrap();
        assert!(Store::open_at(&p).unwrap().secrets.is_empty());
        let e = remove_at(&p, &["K".into()]).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
    }

    #[test]
    fn readable_store_is_refused_with_the_fix() {
        let (_d, p) = store();
        add_at(&p, "K", "value".into(), vec!["h.example".into()], false).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Store::open_at(&p).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("mode 0644") && msg.contains(&format!("chmod 600 {}", p.display())),
            "{msg}"
        );
        // Writing is refused too (update reads first), and the file is left as it was.
        assert!(add_at(&p, "J", "v".into(), vec!["h.example".into()], false).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = p.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let msg = Store::open_at(&p).unwrap_err().to_string();
        assert!(msg.contains("chmod 700"), "{msg}");
    }

    #[test]
    fn broken_store_names_line() {
        let (_d, p) = store();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::set_permissions(p.parent().unwrap(), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(&p, "version = 1\n[secret.K]\nvalue = \"x\"\nhost = []\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let msg = Store::open_at(&p).unwrap_err().to_string();
        assert!(
            msg.contains("secrets.toml:4:1:") && msg.contains("host"),
            "{msg}"
        );
    }

    #[test]
    fn resolve_prefers_store_then_known_environment() {
        let (_d, p) = store();
        add_at(
            &p,
            "OPENAI_API_KEY",
            "stored-val".into(),
            vec!["gw.corp.example".into()],
            false,
        )
        .unwrap();
        let s = Store::open_at(&p).unwrap();
        let env = |n: &str| match n {
            "OPENAI_API_KEY" => Some("env-openai".to_string()),
            "ANTHROPIC_API_KEY" => Some("env-anthropic".to_string()),
            "CUSTOM" => Some("env-custom".to_string()),
            _ => None,
        };
        let mut a = req("ANTHROPIC_API_KEY", false);
        a.env = Some("AK".into());
        let r = resolve_with(
            &s,
            &env,
            &[req("OPENAI_API_KEY", false), a, req("GEMINI_API_KEY", true)],
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].value.as_str(), r[0].origin),
            ("stored-val", Origin::Stored)
        );
        // The store's binding, not the definition's hosts.
        assert_eq!(r[0].hosts, ["gw.corp.example"]);
        assert_eq!(
            (r[1].value.as_str(), r[1].origin, r[1].env.as_str()),
            ("env-anthropic", Origin::Environment, "AK")
        );
        assert_eq!(r[1].hosts, ["api.anthropic.com"]);
        assert!(!format!("{r:?}").contains("env-anthropic"));
        // Unknown names never come from the environment: they have no safe binding.
        let e = resolve_with(
            &s,
            &env,
            &[req("CUSTOM", false), req("GITHUB_TOKEN", false)],
        )
        .unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("secret CUSTOM, GITHUB_TOKEN is not stored"),
            "{msg}"
        );
        assert!(
            msg.contains("axctl secrets add CUSTOM --host api.example.com"),
            "{msg}"
        );
    }

    #[test]
    fn names_and_hosts_are_checked() {
        assert!(check_name("GITHUB_TOKEN").is_ok());
        for bad in ["", "1X", "A-B", "A B"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_hosts(&["API.Example.com".into(), "api.example.com".into()]).unwrap(),
            ["api.example.com"]
        );
        for bad in ["https://x.com", "x.com:443", "*.x.com", "x.com/p", ""] {
            assert!(check_hosts(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
