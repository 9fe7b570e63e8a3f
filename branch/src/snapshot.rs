//! The snapshot taken at `axctl run`: base commit + the host's uncommitted changes, as a tree
//! (and a commit) in a private object directory. The host repository is only read.
//!
//! Cost is O(changed files) in hashing: gix's status compares the index's stat data with the
//! working tree (one `lstat` per tracked file, no reads), diffs HEAD's tree against the index
//! (staged changes), and walks the working tree for untracked files; only files that are
//! modified, newly staged-and-modified or untracked are read and hashed. The new tree is made
//! with gix's tree editor starting from HEAD's tree, so only trees on changed paths are written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use gix::bstr::{BString, ByteSlice};
use gix::objs::tree::EntryKind;
use gix::ObjectId;

use super::{gx, open_host, private_odb, Snapshot, SNAPSHOT_MESSAGE};

/// What to do with one path of the tree.
#[derive(Debug, Clone)]
enum Edit {
    /// Take this entry (from the index).
    Set(EntryKind, ObjectId),
    Remove,
    /// Hash whatever the working tree has at this path (gone or a directory → remove). The
    /// index's entry kind, if any, is kept when the file system has no exec bit.
    FromWorktree(Option<EntryKind>),
    /// An untracked nested repository: a gitlink to its HEAD, like `git add -A`.
    NestedRepo,
}

/// Takes the snapshot of the repository whose working tree contains `repo` (see [`Snapshot`]).
/// New objects go to `objects_out` (created if missing, with `info/alternates` → the host's
/// objects). Nothing in the host repository is written.
pub fn snapshot(repo: &Path, objects_out: &Path) -> Result<Snapshot> {
    let mut repo = open_host(repo)?;
    repo.objects = private_odb(&repo, objects_out)?;
    let workdir = repo.workdir().expect("checked by open_host").to_owned();
    let hash = repo.object_hash();

    let base_commit = gx(gx(repo.head())?.try_peel_to_id())?.map(|id| id.detach());
    let base_tree = match base_commit {
        Some(c) => gx(gx(repo.find_commit(c))?.tree_id())?.detach(),
        None => ObjectId::empty_tree(hash),
    };
    let exec_bit = gx(repo.filesystem_options())?.executable_bit;

    // Staged changes (HEAD tree vs index) first, then working tree vs index on top.
    let mut staged: BTreeMap<BString, Edit> = BTreeMap::new();
    let mut worktree: BTreeMap<BString, Edit> = BTreeMap::new();
    let iter = gx(gx(repo.status(gix::progress::Discard))?
        .untracked_files(gix::status::UntrackedFiles::Files)
        .index_worktree_submodules(gix::status::Submodule::Given {
            ignore: gix::submodule::config::Ignore::All,
            check_dirty: false,
        })
        .index_worktree_rewrites(None)
        .tree_index_track_renames(gix::status::tree_index::TrackRenames::Disabled)
        .head_tree(base_tree)
        .into_iter(None::<BString>))?;
    for item in iter {
        let item = gx(item)?;
        classify(item, &mut staged, &mut worktree);
    }

    let mut edits = staged;
    edits.extend(worktree);

    let mut editor = gx(repo.edit_tree(base_tree))?;
    let mut hashed = 0usize;
    for (path, edit) in &edits {
        match edit {
            Edit::Set(kind, id) => {
                gx(editor.upsert(path.as_bstr(), *kind, *id))?;
            }
            Edit::Remove => {
                gx(editor.remove(path.as_bstr()))?;
            }
            Edit::FromWorktree(index_kind) => {
                let abs = workdir.join(super::bpath(path.as_bstr()));
                match super::upper::blob_from_disk(&repo, &abs, exec_bit, *index_kind)
                    .with_context(|| format!("hashing {}", abs.display()))?
                {
                    Some((kind, id)) => {
                        hashed += 1;
                        gx(editor.upsert(path.as_bstr(), kind, id))?;
                    }
                    None => {
                        gx(editor.remove(path.as_bstr()))?;
                    }
                }
            }
            Edit::NestedRepo => {
                let abs = workdir.join(super::bpath(path.as_bstr()));
                if let Some(id) = nested_head(&abs) {
                    gx(editor.upsert(path.as_bstr(), EntryKind::Commit, id))?;
                }
            }
        }
    }
    let tree = gx(editor.write())?.detach();

    // Clean tree (or an unborn repository without files): no snapshot commit.
    let clean = match base_commit {
        Some(_) => tree == base_tree,
        None => tree == ObjectId::empty_tree(hash),
    };
    let snapshot_commit = if clean {
        None
    } else {
        let sig = super::Identity {
            name: "ax".into(),
            email: "ax@ax.invalid".into(),
            committer: None,
            time: None,
        }
        .signature();
        let commit = gix::objs::Commit {
            tree,
            parents: base_commit.into_iter().collect(),
            author: sig.clone(),
            committer: sig,
            encoding: None,
            message: SNAPSHOT_MESSAGE.into(),
            extra_headers: Vec::new(),
        };
        Some(gx(repo.write_object(&commit))?.detach())
    };

    Ok(Snapshot {
        base_commit,
        tree,
        snapshot_commit,
        objects_dir: std::fs::canonicalize(objects_out)?,
        hashed_files: hashed,
    })
}

fn kind_of(mode: gix::index::entry::Mode) -> Option<EntryKind> {
    mode.to_tree_entry_mode().map(|m| m.kind())
}

fn classify(
    item: gix::status::Item,
    staged: &mut BTreeMap<BString, Edit>,
    worktree: &mut BTreeMap<BString, Edit>,
) {
    use gix::diff::index::ChangeRef;
    use gix::status::index_worktree::{Item as Iw, RewriteSource};
    use gix::status::plumbing::index_as_worktree::{Change, EntryStatus};
    match item {
        gix::status::Item::TreeIndex(change) => match change {
            ChangeRef::Addition {
                location,
                entry_mode,
                id,
                ..
            }
            | ChangeRef::Modification {
                location,
                entry_mode,
                id,
                ..
            } => {
                let edit = match kind_of(entry_mode) {
                    Some(k) => Edit::Set(k, id.into_owned()),
                    None => Edit::Remove,
                };
                staged.insert(location.into_owned(), edit);
            }
            ChangeRef::Deletion { location, .. } => {
                staged.insert(location.into_owned(), Edit::Remove);
            }
            ChangeRef::Rewrite {
                source_location,
                location,
                entry_mode,
                id,
                ..
            } => {
                staged.insert(source_location.into_owned(), Edit::Remove);
                let edit = match kind_of(entry_mode) {
                    Some(k) => Edit::Set(k, id.into_owned()),
                    None => Edit::Remove,
                };
                staged.insert(location.into_owned(), edit);
            }
        },
        gix::status::Item::IndexWorktree(iw) => match iw {
            Iw::Modification {
                entry,
                rela_path,
                status,
                ..
            } => match status {
                // Stat data differs but the content is the same.
                EntryStatus::NeedsUpdate(_) => {}
                EntryStatus::Change(Change::Removed) => {
                    worktree.insert(rela_path, Edit::Remove);
                }
                // Submodules keep their gitlink entry as the index has it.
                EntryStatus::Change(Change::SubmoduleModification(_)) => {}
                EntryStatus::Change(_)
                | EntryStatus::Conflict { .. }
                | EntryStatus::IntentToAdd => {
                    if entry.mode.is_submodule() {
                        return;
                    }
                    worktree.insert(rela_path, Edit::FromWorktree(kind_of(entry.mode)));
                }
            },
            Iw::DirectoryContents { entry, .. } => untracked(entry, worktree),
            Iw::Rewrite {
                source,
                dirwalk_entry,
                ..
            } => {
                if let RewriteSource::RewriteFromIndex {
                    source_rela_path, ..
                } = source
                {
                    worktree.insert(source_rela_path, Edit::Remove);
                }
                untracked(dirwalk_entry, worktree);
            }
        },
    }
}

fn untracked(entry: gix::dir::Entry, worktree: &mut BTreeMap<BString, Edit>) {
    use gix::dir::entry::{Kind, Status};
    if entry.status != Status::Untracked {
        return;
    }
    match entry.disk_kind {
        Some(Kind::File) | Some(Kind::Symlink) => {
            worktree.insert(entry.rela_path, Edit::FromWorktree(None));
        }
        Some(Kind::Repository) => {
            worktree.insert(entry.rela_path, Edit::NestedRepo);
        }
        _ => {}
    }
}

/// HEAD of an untracked repository nested in the working tree (what `git add` records).
fn nested_head(path: &Path) -> Option<ObjectId> {
    let repo = gix::open(path).ok()?;
    let mut head = repo.head().ok()?;
    head.try_peel_to_id().ok()?.map(|id| id.detach())
}
