//! The agent's own `.git`: a small repository in the upper layer whose object store
//! borrows the host's objects read-only through `objects/info/alternates`, so git in the guest
//! works normally (status, add, commit, log, branch) without copying the host's packs.
//!
//! Layout written into `<upper>/.git` before the VM starts:
//! - `HEAD` → `refs/heads/ax/<name>`, which points at [`Snapshot::start_commit`];
//! - `objects/` holds the snapshot's private objects (only what the host's uncommitted
//!   changes added), `objects/info/alternates` names where the guest sees the host's objects;
//! - `index` is the snapshot's tree (no stat data: the first `git status` in the guest
//!   compares contents once and rewrites it into the upper layer);
//! - `config` with the agent's identity, so commits work without setup.
//!
//! [`super::build_branch`] later imports the commits made there (docs/branch.md).

use super::{open_host, private_odb, Identity, Snapshot};
use anyhow::{Context, Result};
use std::path::Path;

/// Writes the guest repository at `git_dir` (normally `<upper>/.git`). `host_objects_in_guest`
/// is where the guest sees the host's object directory (e.g. `/run/ax/objects`).
pub fn prepare_guest_git(
    repo: &Path,
    snap: &Snapshot,
    git_dir: &Path,
    name: &str,
    identity: &Identity,
    host_objects_in_guest: &str,
) -> Result<()> {
    let mut host = open_host(repo)?;
    host.objects = private_odb(&host, &snap.objects_dir)?;
    for d in ["objects/info", "objects/pack", "refs/heads/ax", "refs/tags"] {
        std::fs::create_dir_all(git_dir.join(d))
            .with_context(|| format!("creating {}", git_dir.join(d).display()))?;
    }
    let w = |rel: &str, body: String| {
        std::fs::write(git_dir.join(rel), body).with_context(|| format!("writing .git/{rel}"))
    };
    w("HEAD", format!("ref: refs/heads/ax/{name}\n"))?;
    if let Some(start) = snap.start_commit() {
        w(&format!("refs/heads/ax/{name}"), format!("{start}\n"))?;
    }
    w(
        "config",
        format!(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
             \tlogallrefupdates = true\n[user]\n\tname = {}\n\temail = {}\n",
            config_value(&identity.name),
            config_value(&identity.email)
        ),
    )?;
    w(
        "objects/info/alternates",
        format!("{host_objects_in_guest}\n"),
    )?;
    w("description", "ax agent repository\n".into())?;
    copy_loose_objects(&snap.objects_dir, &git_dir.join("objects"))?;

    let state = gix::index::State::from_tree(&snap.tree, &host.objects, Default::default())
        .map_err(|e| anyhow::anyhow!("building the guest index from {}: {e}", snap.tree))?;
    let mut index = gix::index::File::from_state(state, git_dir.join("index"));
    index
        .write(Default::default())
        .map_err(|e| anyhow::anyhow!("writing the guest index: {e}"))?;
    Ok(())
}

/// A git config value (git-config(1), "Syntax"): in double quotes, with `\` and `"` escaped,
/// so names with `#`, `;` or leading spaces survive. Control characters are refused earlier
/// ([`Identity::validate`]).
fn config_value(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Copies the loose objects (`xx/yyyy…`) of `from` into `to`.
fn copy_loose_objects(from: &Path, to: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for fan in rd.flatten() {
        let fname = fan.file_name();
        let f = fname.to_string_lossy();
        if f.len() != 2 || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let dst = to.join(&*f);
        std::fs::create_dir_all(&dst)?;
        for obj in std::fs::read_dir(fan.path())?.flatten() {
            std::fs::copy(obj.path(), dst.join(obj.file_name()))
                .with_context(|| format!("copying object {}", obj.path().display()))?;
        }
    }
    Ok(())
}
