//! ax-branch, git plumbing for ax: the **snapshot** of the host repository taken at `axctl run`
//! (the read-only lower layer) and the **branch** `ax/<name>` built from lower + upper when the
//! agent exits or on `axctl commit NAME`. Everything is done with gix; the `git` CLI is never run
//! here (tests use it to set up repositories and to check results).
//!
//! Promises (see `docs/branch.md`):
//! - [`snapshot`] never writes the host repository: not its working tree, index, refs, config or
//!   object store. New blobs/trees/the snapshot commit go to a private loose-object directory that
//!   borrows the host's objects through `info/alternates`.
//! - [`build_branch`] writes exactly one ref, `refs/heads/ax/<name>` (compare-and-swap, plus its
//!   reflog when the repository keeps reflogs), and adds objects to the host's object store. It
//!   never touches HEAD, the index, the working tree or any other ref, runs no hooks and never
//!   reads the user's git identity.

mod beneath;
mod branch;
mod guest;
mod snapshot;
mod upper;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use branch::{build_branch, build_branch_with, BranchOptions, BranchResult};
pub use gix::ObjectId;
pub use guest::prepare_guest_git;
pub use snapshot::snapshot;
pub use upper::{scan_upper, scan_upper_with, UpperChange, DEFAULT_MAX_FILE_BYTES, MAX_FILE_ENV};

/// Message of the commit that records the host's uncommitted changes at `axctl run`.
pub const SNAPSHOT_MESSAGE: &str = "ax: working tree at run start\n";

/// The branch namespace: branch `ax/<name>` is ref `refs/heads/ax/<name>`.
pub const BRANCH_PREFIX: &str = "refs/heads/ax/";

/// The repository state an agent starts from (the lower layer). Serializable so the supervisor
/// can keep it in the agent's state directory and `axctl commit` can use it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// HEAD's commit at snapshot time; `None` for an unborn repository.
    #[serde(with = "hex_opt")]
    pub base_commit: Option<ObjectId>,
    /// Base commit + the host's uncommitted changes (staged and unstaged modifications,
    /// deletions, untracked files that are not ignored): what `git add -A && git write-tree`
    /// would give, computed without touching the index.
    #[serde(with = "hex")]
    pub tree: ObjectId,
    /// A commit of `tree` with parent `base_commit` ("ax: working tree at run start"), in the
    /// private object directory; `None` when the working tree was clean (then `tree` is the base
    /// commit's tree) or when the repository is unborn and has no files at all.
    #[serde(with = "hex_opt")]
    pub snapshot_commit: Option<ObjectId>,
    /// The private loose-object directory holding the new objects (with `info/alternates`
    /// pointing at the host's object directory).
    pub objects_dir: PathBuf,
    /// Number of paths whose content was hashed (changed or untracked files).
    #[serde(default)]
    pub hashed_files: usize,
}

impl Snapshot {
    /// The commit the agent's HEAD should start at: the snapshot commit when the host had
    /// uncommitted changes, else the base commit (`None`: unborn repository without files).
    pub fn start_commit(&self) -> Option<ObjectId> {
        self.snapshot_commit.or(self.base_commit)
    }

    /// Whether the host had uncommitted changes at snapshot time.
    pub fn is_dirty(&self) -> bool {
        self.snapshot_commit.is_some()
    }
}

/// A name and an email, as in a commit's author or committer line (`Name <email>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub email: String,
}

/// Author and committer of the commits ax makes on `ax/<name>`, and the `user.name` /
/// `user.email` of the agent's own `.git`. Never taken from the user's git config: from axctl's
/// config (`[branch]`, docs/config.md), `axctl run --author`, or [`Identity::agent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Author name.
    pub name: String,
    /// Author email.
    pub email: String,
    /// Committer, when it differs from the author (`None`: the author commits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Person>,
    /// Commit time in seconds since the epoch (UTC); `None` = now. For reproducible tests.
    #[serde(default)]
    pub time: Option<i64>,
}

impl Identity {
    /// The default identity of agent `name`: `ax agent <name> <<name>@ax.invalid>`.
    pub fn agent(name: &str) -> Self {
        Self::agent_with_domain(name, "ax.invalid")
    }

    /// `ax agent <name> <<name>@<domain>>`.
    pub fn agent_with_domain(name: &str, domain: &str) -> Self {
        Identity {
            name: format!("ax agent {name}"),
            email: format!("{name}@{domain}"),
            committer: None,
            time: None,
        }
    }

    /// Checks that every name and email can be written into a commit header (and the agent's
    /// git config): not empty (names), no `<`, `>` or control characters (newlines would end
    /// the header line). Errors say which field.
    pub fn validate(&self) -> Result<()> {
        let mut fields = vec![("author name", &self.name), ("author email", &self.email)];
        if let Some(c) = &self.committer {
            fields.push(("committer name", &c.name));
            fields.push(("committer email", &c.email));
        }
        for (what, v) in fields {
            if v.trim().is_empty() && what.ends_with("name") {
                bail!("the {what} is empty");
            }
            if let Some(c) = v.chars().find(|c| matches!(c, '<' | '>') || c.is_control()) {
                bail!("the {what} {v:?} contains {c:?}, which a commit header cannot hold");
            }
        }
        Ok(())
    }

    fn sig(&self, name: &str, email: &str) -> gix::actor::Signature {
        let time = match self.time {
            Some(t) => gix::date::Time::new(t, 0),
            None => gix::date::Time::now_utc(),
        };
        gix::actor::Signature {
            name: name.into(),
            email: email.into(),
            time,
        }
    }

    /// The author line.
    pub(crate) fn signature(&self) -> gix::actor::Signature {
        self.sig(&self.name, &self.email)
    }

    /// The committer line (the author's unless a committer is set); also the identity of
    /// reflog entries, as in git.
    pub(crate) fn committer_signature(&self) -> gix::actor::Signature {
        match &self.committer {
            Some(c) => self.sig(&c.name, &c.email),
            None => self.signature(),
        }
    }
}

/// Checks an agent/branch name: `ax/<name>` must be a valid ref name of one component.
pub fn validate_branch_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid branch name {name:?}: use a non-empty name without '/'");
    }
    let full = format!("{BRANCH_PREFIX}{name}");
    gix::validate::reference::name(full.as_str().into())
        .map_err(|e| anyhow::anyhow!("invalid branch name {name:?}: {e}"))?;
    Ok(())
}

/// Opens the host repository at `path` (its working tree or any directory inside it).
pub(crate) fn open_host(path: &Path) -> Result<gix::Repository> {
    let repo = gix::open(path).with_context(|| {
        format!(
            "{} is not a git repository (run `git init` there)",
            path.display()
        )
    })?;
    if repo.workdir().is_none() {
        bail!(
            "{} is a bare repository: ax needs a working tree",
            path.display()
        );
    }
    Ok(repo)
}

/// Opens a loose-object directory (creating it and its `info/alternates` → the host's objects)
/// as a gix object handle: reads find host objects too, writes land in `dir`.
pub(crate) fn private_odb(host: &gix::Repository, dir: &Path) -> Result<gix::OdbHandle> {
    let host_objects = host.common_dir().join("objects");
    let host_objects = std::fs::canonicalize(&host_objects)
        .with_context(|| format!("reading {}", host_objects.display()))?;
    std::fs::create_dir_all(dir.join("info"))
        .with_context(|| format!("creating the private object directory {}", dir.display()))?;
    let alt = dir.join("info").join("alternates");
    let line = format!("{}\n", host_objects.display());
    if std::fs::read_to_string(&alt).ok().as_deref() != Some(line.as_str()) {
        std::fs::write(&alt, line).with_context(|| format!("writing {}", alt.display()))?;
    }
    let handle = gix::odb::at(dir, host.object_hash())
        .with_context(|| format!("opening object directory {}", dir.display()))?;
    Ok(gix::OdbHandle::new(handle, host.object_hash()).with_write_passthrough())
}

/// A git path (bytes, `/`-separated) as a relative file-system path (Unix: the same bytes).
pub(crate) fn bpath(p: &gix::bstr::BStr) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(p))
}

/// Turns a gix error (which is `Send + Sync` but sometimes not `'static` friendly) into anyhow.
pub(crate) fn gx<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("{e}"))
}

mod hex {
    use super::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ObjectId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::from_hex(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod hex_opt {
    use super::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<ObjectId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&id.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| ObjectId::from_hex(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `<state dir>/snapshot.json`: the [`Snapshot`] an agent started from (docs/state.md).
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// Builds branch `ax/<name>` for the agent whose state directory is `dir`: its snapshot
/// ([`SNAPSHOT_FILE`]), its upper layer (`<dir>/upper`) and the commits in the guest's own
/// `.git` there (docs/branch.md), into `repo` with `identity`. Safe while the agent runs (a
/// later build moves the branch forward) and after a crash of the VM or of ax-fsd: finished
/// writes are in the upper layer. Errors: an unreadable or corrupt snapshot, and those of
/// [`build_branch`].
pub fn build_for_agent(
    dir: &Path,
    repo: &Path,
    name: &str,
    identity: &Identity,
) -> Result<BranchResult> {
    let snap: Snapshot = serde_json::from_slice(
        &std::fs::read(dir.join(SNAPSHOT_FILE)).context("reading snapshot.json")?,
    )
    .context("parsing snapshot.json")?;
    let upper = dir.join("upper");
    let guest_git = upper.join(".git");
    build_branch(
        repo,
        &snap,
        &upper,
        // The guest may have replaced `.git` by a symlink: not followed (GuestStore refuses it).
        std::fs::symlink_metadata(&guest_git)
            .is_ok_and(|m| m.is_dir() || m.is_symlink())
            .then_some(guest_git.as_path()),
        name,
        identity,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        for ok in ["t1", "fix-login", "agent_7", "a.b"] {
            validate_branch_name(ok).unwrap();
        }
        for bad in [
            "", "a/b", "..", "x..y", "a b", "x.lock", "a~1", "a^", "a:b", "@{x}",
        ] {
            assert!(validate_branch_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_identity() {
        let id = Identity::agent("t1");
        assert_eq!(id.name, "ax agent t1");
        assert_eq!(id.email, "t1@ax.invalid");
        let sig = Identity {
            time: Some(42),
            ..id.clone()
        }
        .signature();
        assert_eq!(sig.time.seconds, 42);
        assert_eq!(id.committer_signature(), id.signature());
        let c = Identity {
            committer: Some(Person {
                name: "CI".into(),
                email: "ci@example.com".into(),
            }),
            time: Some(1),
            ..id
        };
        assert_eq!(c.committer_signature().name, "CI");
        assert_eq!(c.signature().name, "ax agent t1");
        c.validate().unwrap();
        // JSON: the committer is omitted when it is the author (older state files parse).
        let j = serde_json::to_string(&Identity::agent("x")).unwrap();
        assert!(!j.contains("committer"), "{j}");
        assert_eq!(
            serde_json::from_str::<Identity>(&j).unwrap(),
            Identity::agent("x")
        );
        let back: Identity = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            Identity::agent_with_domain("x", "corp.example").email,
            "x@corp.example"
        );
    }

    #[test]
    fn identities_that_cannot_be_written_are_refused() {
        for (name, email) in [
            ("", "a@b"),
            ("  ", "a@b"),
            ("A <x>", "a@b"),
            ("A", "a@b>"),
            ("A\nB", "a@b"),
            ("A", "a\tb"),
        ] {
            let id = Identity {
                name: name.into(),
                email: email.into(),
                committer: None,
                time: None,
            };
            assert!(id.validate().is_err(), "{name:?} {email:?} accepted");
        }
        let bad_committer = Identity {
            committer: Some(Person {
                name: "C".into(),
                email: "<c>".into(),
            }),
            ..Identity::agent("t")
        };
        let e = bad_committer.validate().unwrap_err().to_string();
        assert!(e.contains("committer email"), "{e}");
    }

    #[test]
    fn snapshot_json() {
        let id = ObjectId::from_hex(b"4b825dc642cb6eb9a060e54bf8d69288fbee4904").unwrap();
        let s = Snapshot {
            base_commit: None,
            tree: id,
            snapshot_commit: Some(id),
            objects_dir: "/x".into(),
            hashed_files: 3,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"base_commit\":null"), "{j}");
        assert!(
            j.contains("4b825dc642cb6eb9a060e54bf8d69288fbee4904"),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<Snapshot>(&j).unwrap(), s);
        assert_eq!(s.start_commit(), Some(id));
        assert!(s.is_dirty());
        assert!(serde_json::from_str::<Snapshot>(&j.replace("4b82", "zz82")).is_err());
    }
}
