//! The synthesized `/workspace/.env` (`docs/network.md` "The guest side"): the secrets'
//! placeholders that SETUP carries, as `NAME=placeholder` lines, for tools that read a
//! dotenv file instead of the environment. It is never committed: `/.env` goes into the
//! agent's own `.git/info/exclude` (so `git add -A` in the guest leaves it out) and the host
//! builds `ax/<name>` with the agent's exclude rules (crate ax-branch, `branch/src/upper.rs`).
//!
//! A repository that has its own `.env` keeps it untouched (nothing is written then).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The line written to the agent's `.git/info/exclude`.
pub const EXCLUDE_LINE: &str = "/.env";

/// What [`write`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `.env` written (mode 0600) and excluded.
    Written,
    /// The workspace already has a `.env`: left alone.
    Exists,
    /// No variables, or `workspace` is not a mounted share: nothing to do.
    Skipped,
}

/// Writes `<workspace>/.env` from `vars` unless it exists, and adds [`EXCLUDE_LINE`] to
/// `<workspace>/.git/info/exclude` when the workspace has a `.git` directory. `workspace`
/// must be a mount point (a device other than its parent's), else nothing is written.
/// Errors: the files cannot be written.
pub fn write(workspace: &Path, vars: &BTreeMap<String, String>) -> std::io::Result<Outcome> {
    if !is_mount_point(workspace) {
        return Ok(Outcome::Skipped);
    }
    write_in(workspace, vars)
}

/// [`write`] without the mount-point check.
fn write_in(workspace: &Path, vars: &BTreeMap<String, String>) -> std::io::Result<Outcome> {
    if vars.is_empty() {
        return Ok(Outcome::Skipped);
    }
    let path = workspace.join(".env");
    let mut text = String::from(
        "# Written by ax: placeholders for this agent's secrets. The network swaps each for\n\
         # the real value in requests to the hosts it is bound to. Never committed.\n",
    );
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => f.write_all(text.as_bytes())?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(Outcome::Exists),
        Err(e) => return Err(e),
    }
    let git = workspace.join(".git");
    if git.is_dir() {
        let info = git.join("info");
        std::fs::create_dir_all(&info)?;
        let exclude = info.join("exclude");
        let old = std::fs::read_to_string(&exclude).unwrap_or_default();
        if !old.lines().any(|l| l.trim() == EXCLUDE_LINE) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&exclude)?;
            let sep = if old.is_empty() || old.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            write!(
                f,
                "{sep}# ax: the synthesized .env (placeholders only)\n{EXCLUDE_LINE}\n"
            )?;
        }
    }
    Ok(Outcome::Written)
}

fn is_mount_point(dir: &Path) -> bool {
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "ANTHROPIC_API_KEY".to_string(),
            "sk-ant-api03-axphX".to_string(),
        )])
    }

    #[test]
    fn not_a_mount_point_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        // A fresh directory on the same file system as its parent.
        let ws = d.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        assert_eq!(write(&ws, &vars()).unwrap(), Outcome::Skipped);
        assert!(!ws.join(".env").exists());
    }

    #[test]
    fn writes_and_excludes_once() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        std::fs::create_dir_all(ws.join(".git/info")).unwrap();
        std::fs::write(ws.join(".git/info/exclude"), "*.o").unwrap();
        let out = write_in(ws, &vars()).unwrap();
        assert_eq!(out, Outcome::Written);
        let env = std::fs::read_to_string(ws.join(".env")).unwrap();
        assert!(
            env.contains("ANTHROPIC_API_KEY=sk-ant-api03-axphX\n"),
            "{env}"
        );
        assert_eq!(
            std::fs::metadata(ws.join(".env")).unwrap().mode() & 0o777,
            0o600
        );
        let ex = std::fs::read_to_string(ws.join(".git/info/exclude")).unwrap();
        assert!(ex.starts_with("*.o\n# ax:"), "{ex}");
        assert_eq!(ex.matches("\n/.env\n").count(), 1, "{ex}");
        // A second SETUP: the file exists, nothing changes.
        assert_eq!(write_in(ws, &vars()).unwrap(), Outcome::Exists);
        assert_eq!(
            std::fs::read_to_string(ws.join(".git/info/exclude")).unwrap(),
            ex
        );
    }

    #[test]
    fn no_variables_no_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            write_in(d.path(), &BTreeMap::new()).unwrap(),
            Outcome::Skipped
        );
        assert!(!d.path().join(".env").exists());
    }

    #[test]
    fn an_existing_env_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".env"), "MINE=1\n").unwrap();
        assert_eq!(write_in(d.path(), &vars()).unwrap(), Outcome::Exists);
        assert_eq!(
            std::fs::read_to_string(d.path().join(".env")).unwrap(),
            "MINE=1\n"
        );
    }
}
