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
//! The upper layer is written by the guest, also while it is read (`axctl commit` of a live
//! agent): every name is opened once below the upper's directory descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and judged by `fstat` of what was opened
//! ([`super::beneath`]); a symlink is never followed.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gix::bstr::{BStr, BString, ByteSlice, ByteVec};
use gix::objs::tree::EntryKind;
use gix::ObjectId;

use super::beneath::{Dir, Node};
use super::gx;
// One reading of overlayfs's whiteout and opaque marks, shared with ax-fsd (their writer).
use ax_fsd::overlay::{is_whiteout_with, OPAQUE, OPAQUE_XATTRS, XWHITEOUTS};

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
/// anything else (missing, directory, device, FIFO, socket). For the host's own working tree
/// (the snapshot); the upper layer is read through [`Dir`] instead.
pub(crate) fn blob_from_disk(
    repo: &gix::Repository,
    path: &Path,
    exec_bit: bool,
    keep: Option<EntryKind>,
) -> Result<Option<(EntryKind, ObjectId)>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let dir = match Dir::open(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    blob_from_node(repo, &dir, Path::new(name), exec_bit, keep, u64::MAX, path)
}

/// [`blob_from_disk`] for the name `rel` below `dir`, refusing a regular file larger than
/// `max_bytes` (its apparent size) with an error naming `what` and the setting.
pub(crate) fn blob_from_node(
    repo: &gix::Repository,
    dir: &Dir,
    rel: &Path,
    exec_bit: bool,
    keep: Option<EntryKind>,
    max_bytes: u64,
    what: &Path,
) -> Result<Option<(EntryKind, ObjectId)>> {
    let Some(node) = dir.node(rel)? else {
        return Ok(None);
    };
    if node.is_symlink() {
        let target = node.read_link()?;
        let id = gx(repo.write_blob(&target))?.detach();
        return Ok(Some((EntryKind::Link, id)));
    }
    if !node.is_file() {
        return Ok(None);
    }
    let (file, st) = node.open_read()?;
    let kind = if exec_bit {
        if st.st_mode & 0o100 != 0 {
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
    let size = st.st_size as u64;
    if size > max_bytes {
        bail!(
            "{} is {} bytes, above the branch's file size limit of {} bytes \
             (setting {MAX_FILE_ENV}, docs/branch.md): remove the file in the agent, or raise the limit",
            what.display(),
            size,
            max_bytes
        );
    }
    let id = write_blob_streaming(repo, file, size)?;
    Ok(Some((kind, id)))
}

/// The environment variable that sets the largest file the branch builder takes (bytes).
pub const MAX_FILE_ENV: &str = "AX_BRANCH_MAX_FILE_BYTES";

/// Default of [`MAX_FILE_ENV`]: 1 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// The file size limit: [`MAX_FILE_ENV`] when set to a number of bytes, else
/// [`DEFAULT_MAX_FILE_BYTES`]. A value that is not a number is an error naming the variable.
pub fn max_file_bytes_from_env() -> Result<u64> {
    match std::env::var(MAX_FILE_ENV) {
        Ok(v) => v.trim().parse().map_err(|_| {
            anyhow::anyhow!("{MAX_FILE_ENV}={v:?} is not a number of bytes (e.g. 1073741824)")
        }),
        Err(_) => Ok(DEFAULT_MAX_FILE_BYTES),
    }
}

/// Writes `size` bytes of `file` as a blob: hashed and zlib-compressed while reading into a
/// temporary loose object (bounded memory, gix's `write_stream`). A file that is shorter than
/// `size` when read (it shrank) is an error, never an object whose header lies.
///
/// The file is hashed first: an object the store already has is not written again (git keeps
/// existing loose objects as they are; rewriting one would change the host's object store
/// where nothing changed).
fn write_blob_streaming(repo: &gix::Repository, mut file: File, size: u64) -> Result<ObjectId> {
    use gix::objs::Write as _;
    use std::io::{Seek, SeekFrom};
    let mut hashing = Exact {
        inner: (&mut file).take(size),
        left: size,
    };
    let id = gx(gix::objs::compute_stream_hash(
        repo.object_hash(),
        gix::objs::Kind::Blob,
        &mut hashing,
        size,
        &mut gix::utils::progress::Discard,
        &std::sync::atomic::AtomicBool::new(false),
    ))?;
    if repo.has_object(id) {
        return Ok(id);
    }
    file.seek(SeekFrom::Start(0))?;
    let mut reader = Exact {
        inner: file.take(size),
        left: size,
    };
    let id = gx(repo
        .objects
        .write_stream(gix::objs::Kind::Blob, size, &mut reader))?;
    Ok(id)
}

/// A reader of exactly `left` bytes: an early end of file is an error.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being read (try again)",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
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
    max_file_bytes: u64,
    out: Vec<UpperChange>,
}

/// A fake absolute root for `.gitignore` sources, so pattern lists get their directory as base.
const IGNORE_ROOT: &str = "/ax-upper-root";

/// Scans `upper` (overlayfs format) against the lower tree `lower_tree` and returns the tree
/// edits, writing new blobs into `repo`. `tracked_trees`: trees whose paths are tracked (ignore
/// rules do not hide changes to them). `skip`: share-relative paths never committed (ax's own
/// files); any entry named `.git` is always skipped. Ignore rules: the host's `core.excludesFile`
/// and `info/exclude`, the agent's own `.git/info/exclude` in `upper`, then each directory's
/// `.gitignore` as the merged view shows it (upper's if present, else lower's unless
/// whited-out or hidden by an opaque/new directory). Files above [`DEFAULT_MAX_FILE_BYTES`]
/// are refused (see [`scan_upper_with`]).
pub fn scan_upper(
    repo: &gix::Repository,
    upper: &Path,
    lower_tree: ObjectId,
    tracked_trees: &[ObjectId],
    skip: &[BString],
) -> Result<Vec<UpperChange>> {
    scan_upper_with(
        repo,
        upper,
        lower_tree,
        tracked_trees,
        skip,
        DEFAULT_MAX_FILE_BYTES,
    )
}

/// [`scan_upper`] with a file size limit: a regular file whose size is above `max_file_bytes`
/// is an error naming it and the setting, before anything of it is read or written.
pub fn scan_upper_with(
    repo: &gix::Repository,
    upper: &Path,
    lower_tree: ObjectId,
    tracked_trees: &[ObjectId],
    skip: &[BString],
    max_file_bytes: u64,
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
    let root = Dir::open(upper).with_context(|| {
        format!(
            "opening upper layer {} (it must be a directory, not a symlink)",
            upper.display()
        )
    })?;
    // The agent's own `.git/info/exclude` (in the upper layer): what git in the guest leaves
    // out stays out of the branch too (e.g. the synthesized `.env`, agentd/src/dotenv.rs).
    let mut ignore = ignore;
    if let Some(bytes) = root
        .read(Path::new(".git/info/exclude"), 16 << 20)
        .with_context(|| format!("reading {}/.git/info/exclude", upper.display()))?
    {
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
    let mut scan = Scan {
        repo,
        lower: &lower,
        ignore,
        exec_bit,
        skip,
        max_file_bytes,
        out: Vec::new(),
    };
    scan.dir(&root, upper, BString::default(), true, false)?;
    Ok(scan.out)
}

/// The value of `trusted.overlay.opaque`, else `user.overlay.opaque`, of an open directory.
fn opaque_of(dir: &Dir) -> Option<Vec<u8>> {
    OPAQUE_XATTRS.iter().find_map(|x| dir.xattr(x))
}

/// ax_fsd's whiteout rule applied to an opened node (its `fstat`, its xattrs by descriptor).
fn node_is_whiteout(node: &Node, xwhiteouts: bool) -> bool {
    is_whiteout_with(
        node.stat.st_mode,
        node.stat.st_rdev,
        node.stat.st_size as u64,
        xwhiteouts,
        |x| node.has_xattr(x),
    )
}

impl Scan<'_, '_> {
    /// Visits the upper directory `dir` (at `abs`, for messages) at share path `rela`.
    /// `lower_visible`: the lower layer's directory at `rela` shows through (not opaque, not
    /// replaced). `ignored`: `rela` itself is ignored (only tracked paths below it count).
    fn dir(
        &mut self,
        dir: &Dir,
        abs: &Path,
        rela: BString,
        lower_visible: bool,
        ignored: bool,
    ) -> Result<()> {
        let opaque = opaque_of(dir);
        let xwhiteouts = opaque.as_deref() == Some(XWHITEOUTS);

        // This directory's .gitignore in the merged view.
        let gi_rela = join(&rela, b".gitignore".as_bstr());
        let gitignore = match dir.node(Path::new(".gitignore"))? {
            Some(n) if n.is_file() && !node_is_whiteout(&n, xwhiteouts) => {
                let (f, _) = n.open_read()?;
                let mut v = Vec::new();
                f.take(16 << 20).read_to_end(&mut v)?;
                Some(v)
            }
            Some(_) => None,
            None if lower_visible => self.lower.lower_blob(gi_rela.as_bstr())?,
            None => None,
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

        let names = dir
            .names()
            .with_context(|| format!("reading {}", abs.display()))?;
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
            let Some(node) = dir.node(Path::new(&name))? else {
                continue;
            };
            if node_is_whiteout(&node, xwhiteouts) {
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
            if node.is_dir() {
                let Some(child) = dir.dir(Path::new(&name))? else {
                    continue; // replaced since: gone for this scan
                };
                let child_opaque = opaque_of(&child).as_deref() == Some(OPAQUE);
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
                self.dir(
                    &child,
                    &child_abs,
                    child_rela,
                    child_lower_visible,
                    child_ignored,
                )?;
            } else if node.is_file() || node.is_symlink() {
                let is_ignored = ignored || self.is_ignored(child_rela.as_bstr(), false);
                if is_ignored && self.lower.tracked(child_rela.as_bstr())?.is_none() {
                    continue;
                }
                let keep = lower_kind;
                if let Some((kind, id)) = blob_from_node(
                    self.repo,
                    dir,
                    Path::new(&name),
                    self.exec_bit,
                    keep,
                    self.max_file_bytes,
                    &child_abs,
                )
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
