//! Reading an upper layer in overlayfs's on-disk format (Documentation/filesystems/overlayfs.rst)
//! as a list of tree edits on top of the lower layer's tree.
//!
//! | upper entry | meaning |
//! | --- | --- |
//! | regular file | new or modified file (exec bit = owner `x`) |
//! | symlink | new or modified symlink (blob = target) |
//! | character device 0:0 | whiteout: the lower path is deleted |
//! | empty regular file with xattr `trusted.overlay.whiteout` / `user.overlay.whiteout` in a directory marked `*.overlay.opaque=x` | "xwhiteout" (overlayfs ≥ 6.7): deleted |
//! | directory with xattr `trusted.overlay.opaque=y` or `user.overlay.opaque=y` | opaque: the lower directory's contents are gone |
//! | directory over a lower non-directory | the lower file is gone |
//! | other devices, FIFOs, sockets | skipped (git cannot store them) |
//!
//! Symlinks are never followed, files are opened with `O_NOFOLLOW`: the upper layer is written
//! by the guest and is untrusted.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gix::bstr::{BStr, BString, ByteSlice, ByteVec};
use gix::objs::tree::EntryKind;
use gix::ObjectId;

use super::gx;
// One reading of overlayfs's whiteout and opaque marks, shared with ax-fsd (their writer).
use ax_fsd::overlay::{is_whiteout, opaque_value, OPAQUE, XWHITEOUTS};

/// Files at or above this size are hashed while streaming instead of read into memory.
const STREAM_THRESHOLD: u64 = 32 << 20;

/// One edit of the tree, in the order they must be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperChange {
    /// `path` now holds this blob (the object is already written).
    Write {
        path: BString,
        kind: EntryKind,
        id: ObjectId,
    },
    /// `path` (file or whole directory) is deleted: a whiteout, or a lower non-directory hidden
    /// by an upper directory.
    Delete { path: BString },
    /// `path` is an opaque directory: everything the lower layer had below it is gone (the
    /// upper's contents follow as separate `Write`s).
    Opaque { path: BString },
}

impl UpperChange {
    pub fn path(&self) -> &BStr {
        match self {
            UpperChange::Write { path, .. }
            | UpperChange::Delete { path }
            | UpperChange::Opaque { path } => path.as_bstr(),
        }
    }
}

/// Hashes the file at `path` into `repo`'s object store without following symlinks: a regular
/// file → blob (mode 100755 when the owner may execute it and `exec_bit` is on; otherwise the
/// `keep` kind if it was executable before), a symlink → blob of its target. `None` for
/// anything else (missing, directory, device, FIFO, socket).
pub(crate) fn blob_from_disk(
    repo: &gix::Repository,
    path: &Path,
    exec_bit: bool,
    keep: Option<EntryKind>,
) -> Result<Option<(EntryKind, ObjectId)>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        let id = gx(repo.write_blob(target.as_os_str().as_bytes()))?.detach();
        return Ok(Some((EntryKind::Link, id)));
    }
    if !ft.is_file() {
        return Ok(None);
    }
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // Decide on what was opened (the path may have changed since the lstat).
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let kind = if exec_bit {
        if meta.mode() & 0o100 != 0 {
            EntryKind::BlobExecutable
        } else {
            EntryKind::Blob
        }
    } else {
        match keep {
            Some(EntryKind::BlobExecutable) => EntryKind::BlobExecutable,
            _ => EntryKind::Blob,
        }
    };
    let id = write_blob_from_file(repo, &mut file, meta.len())?;
    Ok(Some((kind, id)))
}

fn write_blob_from_file(repo: &gix::Repository, file: &mut File, size: u64) -> Result<ObjectId> {
    if size < STREAM_THRESHOLD {
        let mut buf = Vec::with_capacity(size as usize);
        file.read_to_end(&mut buf)?;
        return Ok(gx(repo.write_blob(&buf))?.detach());
    }
    // Large file: hash while streaming into a loose object; the size is fixed up front, so a
    // file that changes length while being read is an error (retry later), never a bad object.
    use gix::objs::Write as _;
    let mut reader = file.take(size);
    let id = gx(repo
        .objects
        .write_stream(gix::objs::Kind::Blob, size, &mut reader))?;
    Ok(id)
}

/// What the scan needs to know about the lower side: trees of tracked content, ignore rules.
pub(crate) struct Lower<'r> {
    repo: &'r gix::Repository,
    /// The lower layer's tree (the snapshot tree).
    lower: gix::Tree<'r>,
    /// Trees whose paths count as tracked (so ignore rules do not apply to them): the lower
    /// tree and the guest HEAD's tree.
    tracked: Vec<gix::Tree<'r>>,
}

impl<'r> Lower<'r> {
    pub(crate) fn new(
        repo: &'r gix::Repository,
        lower: ObjectId,
        tracked: &[ObjectId],
    ) -> Result<Self> {
        let lower_tree = gx(repo.find_tree(lower))?;
        let mut t = vec![lower_tree.clone()];
        for id in tracked {
            if *id != lower {
                t.push(gx(repo.find_tree(*id))?);
            }
        }
        Ok(Lower {
            repo,
            lower: lower_tree,
            tracked: t,
        })
    }

    fn entry(tree: &gix::Tree<'r>, rela: &BStr) -> Result<Option<(EntryKind, ObjectId)>> {
        if rela.is_empty() {
            return Ok(Some((EntryKind::Tree, tree.id)));
        }
        let e = gx(tree.lookup_entry_by_path(super::bpath(rela)))?;
        Ok(e.map(|e| (e.mode().kind(), e.object_id())))
    }

    fn lower_kind(&self, rela: &BStr) -> Result<Option<EntryKind>> {
        Ok(Self::entry(&self.lower, rela)?.map(|e| e.0))
    }

    fn tracked(&self, rela: &BStr) -> Result<Option<EntryKind>> {
        for t in &self.tracked {
            if let Some((k, _)) = Self::entry(t, rela)? {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    fn lower_blob(&self, rela: &BStr) -> Result<Option<Vec<u8>>> {
        match Self::entry(&self.lower, rela)? {
            Some((EntryKind::Blob | EntryKind::BlobExecutable, id)) => {
                Ok(Some(gx(self.repo.find_blob(id))?.take_data()))
            }
            _ => Ok(None),
        }
    }
}

struct Scan<'a, 'r> {
    repo: &'r gix::Repository,
    lower: &'a Lower<'r>,
    ignore: gix::ignore::Search,
    exec_bit: bool,
    skip: &'a [BString],
    out: Vec<UpperChange>,
}

/// A fake absolute root for `.gitignore` sources, so pattern lists get their directory as base.
const IGNORE_ROOT: &str = "/ax-upper-root";

/// Scans `upper` (overlayfs format) against the lower tree `lower_tree` and returns the tree
/// edits, writing new blobs into `repo`. `tracked_trees`: trees whose paths are tracked (ignore
/// rules do not hide changes to them). `skip`: share-relative paths never committed (ax's own
/// files); any entry named `.git` is always skipped. Ignore rules: the host's `core.excludesFile`
/// and `info/exclude`, the agent's own `.git/info/exclude` in `upper`, then each directory's `.gitignore` as the merged view shows it (upper's if
/// present, else lower's unless whited-out or hidden by an opaque/new directory).
pub fn scan_upper(
    repo: &gix::Repository,
    upper: &Path,
    lower_tree: ObjectId,
    tracked_trees: &[ObjectId],
    skip: &[BString],
) -> Result<Vec<UpperChange>> {
    let lower = Lower::new(repo, lower_tree, tracked_trees)?;
    let excludes_file = match repo.config_snapshot().trusted_path("core.excludesFile") {
        Ok(Some(p)) => Some(p),
        _ => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("git").join("ignore")),
    };
    let mut buf = Vec::new();
    let ignore = gix::ignore::Search::from_git_dir(
        repo.common_dir(),
        excludes_file,
        &mut buf,
        Default::default(),
    )
    .context("reading info/exclude and core.excludesFile")?;
    // The agent's own `.git/info/exclude` (in the upper layer): what git in the guest leaves
    // out stays out of the branch too (e.g. the synthesized `.env`, agentd/src/dotenv.rs).
    let mut ignore = ignore;
    let agent_exclude = upper.join(".git").join("info").join("exclude");
    if std::fs::symlink_metadata(&agent_exclude).is_ok_and(|m| m.is_file()) {
        let bytes = std::fs::read(&agent_exclude)
            .with_context(|| format!("reading {}", agent_exclude.display()))?;
        ignore.add_patterns_buffer(
            &bytes,
            // A source at the root: its patterns are relative to the share's root (a source
            // under .git/info would make them relative to that directory).
            Path::new(IGNORE_ROOT).join("agent-info-exclude"),
            Some(Path::new(IGNORE_ROOT)),
            Default::default(),
        )?;
    }
    let exec_bit = gx(repo.filesystem_options())?.executable_bit;
    let meta = std::fs::symlink_metadata(upper)
        .with_context(|| format!("reading upper layer {}", upper.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "upper layer {} is not a directory",
        upper.display()
    );
    let mut scan = Scan {
        repo,
        lower: &lower,
        ignore,
        exec_bit,
        skip,
        out: Vec::new(),
    };
    scan.dir(upper, BString::default(), true, false)?;
    Ok(scan.out)
}

impl Scan<'_, '_> {
    /// Visits upper directory `abs` at share path `rela`. `lower_visible`: the lower layer's
    /// directory at `rela` shows through (not opaque, not replaced). `ignored`: `rela` itself
    /// is ignored (only tracked paths below it count).
    fn dir(&mut self, abs: &Path, rela: BString, lower_visible: bool, ignored: bool) -> Result<()> {
        let opaque = opaque_value(abs);
        let xwhiteouts = opaque.as_deref() == Some(XWHITEOUTS);

        // This directory's .gitignore in the merged view.
        let gi_rela = join(&rela, b".gitignore".as_bstr());
        let gi_abs = abs.join(".gitignore");
        let gitignore = match std::fs::symlink_metadata(&gi_abs) {
            Ok(m) if m.is_file() && !is_whiteout(&gi_abs, &m, xwhiteouts) => {
                Some(std::fs::read(&gi_abs)?)
            }
            Ok(_) => None,
            Err(_) if lower_visible => self.lower.lower_blob(gi_rela.as_bstr())?,
            Err(_) => None,
        };
        let pushed = if let Some(bytes) = gitignore {
            let source = Path::new(IGNORE_ROOT).join(super::bpath(gi_rela.as_bstr()));
            self.ignore.add_patterns_buffer(
                &bytes,
                source,
                Some(Path::new(IGNORE_ROOT)),
                Default::default(),
            )?;
            true
        } else {
            false
        };

        let mut names: Vec<_> = std::fs::read_dir(abs)
            .with_context(|| format!("reading {}", abs.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let name_b = name.as_bytes();
            if name_b == b".git" {
                continue;
            }
            let child_rela = join(&rela, name_b.as_bstr());
            if self.skip.iter().any(|s| s == &child_rela) {
                continue;
            }
            let child_abs = abs.join(&name);
            let meta = match std::fs::symlink_metadata(&child_abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if is_whiteout(&child_abs, &meta, xwhiteouts) {
                if lower_visible && self.lower.lower_kind(child_rela.as_bstr())?.is_some() {
                    self.out.push(UpperChange::Delete { path: child_rela });
                }
                continue;
            }
            let lower_kind = if lower_visible {
                self.lower.lower_kind(child_rela.as_bstr())?
            } else {
                None
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let child_opaque = opaque_value(&child_abs).as_deref() == Some(OPAQUE);
                let child_ignored = ignored || self.is_ignored(child_rela.as_bstr(), true);
                match lower_kind {
                    Some(EntryKind::Tree) if child_opaque => {
                        self.out.push(UpperChange::Opaque {
                            path: child_rela.clone(),
                        });
                    }
                    Some(EntryKind::Tree) => {}
                    Some(_) => self.out.push(UpperChange::Delete {
                        path: child_rela.clone(),
                    }),
                    None => {}
                }
                let child_lower_visible = lower_kind == Some(EntryKind::Tree) && !child_opaque;
                if child_ignored
                    && self.lower.tracked(child_rela.as_bstr())? != Some(EntryKind::Tree)
                {
                    // An ignored directory nothing tracked lives in: skip it whole.
                    continue;
                }
                self.dir(&child_abs, child_rela, child_lower_visible, child_ignored)?;
            } else if ft.is_file() || ft.is_symlink() {
                let is_ignored = ignored || self.is_ignored(child_rela.as_bstr(), false);
                if is_ignored && self.lower.tracked(child_rela.as_bstr())?.is_none() {
                    continue;
                }
                let keep = lower_kind;
                if let Some((kind, id)) = blob_from_disk(self.repo, &child_abs, self.exec_bit, keep)
                    .with_context(|| format!("hashing {}", child_abs.display()))?
                {
                    if lower_kind == Some(EntryKind::Tree) {
                        self.out.push(UpperChange::Delete {
                            path: child_rela.clone(),
                        });
                    }
                    self.out.push(UpperChange::Write {
                        path: child_rela,
                        kind,
                        id,
                    });
                }
            }
            // FIFOs, sockets, devices: git cannot store them.
        }
        if pushed {
            self.ignore.patterns.pop();
        }
        Ok(())
    }

    fn is_ignored(&self, rela: &BStr, is_dir: bool) -> bool {
        self.ignore
            .pattern_matching_relative_path(rela, Some(is_dir), gix::glob::pattern::Case::Sensitive)
            .is_some_and(|m| !m.pattern.is_negative())
    }
}

fn join(dir: &BString, name: &BStr) -> BString {
    let mut p = dir.clone();
    if !p.is_empty() {
        p.push_byte(b'/');
    }
    p.push_str(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        assert_eq!(join(&BString::default(), b"a".as_bstr()), "a");
        assert_eq!(join(&BString::from("a/b"), b"c".as_bstr()), "a/b/c");
    }
}
