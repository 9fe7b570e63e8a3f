//! Branch `ax/<name>` from the snapshot (lower), the guest's commits and the upper layer.
//!
//! History: base → [snapshot commit, if the host was dirty] → [the guest's commits, imported]
//! → [one "ax: uncommitted changes of agent <name>" commit, if the agent's final working tree
//! differs from the last commit]. The final tree is the merged view the agent ended with:
//! lower tree + upper edits (`.gitignore` honoured, `.git` and ax's own files left out).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gix::bstr::{BString, ByteSlice};
use gix::objs::{Find as _, Write as _};
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use super::beneath::Dir;
use super::upper::{max_file_bytes_from_env, scan_upper_with, UpperChange};
use super::{gx, open_host, validate_branch_name, Identity, Snapshot, BRANCH_PREFIX};

/// Message prefix of the commit holding the agent's uncommitted changes.
pub const UNCOMMITTED_PREFIX: &str = "ax: uncommitted changes of agent ";

/// Knobs of [`build_branch_with`].
#[derive(Debug, Clone, Default)]
pub struct BranchOptions {
    /// Share-relative paths ax put into the share itself (e.g. a synthesized `.env`): never
    /// committed, the lower layer's version (if any) stays. `.git` is always left out.
    pub ax_files: Vec<String>,
    /// Overwrite `ax/<name>` even when it points at a commit ax did not make on this agent's
    /// history (someone moved the branch).
    pub force: bool,
    /// The largest file (apparent size, bytes) taken from the upper layer, and the largest
    /// object imported from the guest's `.git`; a larger one fails the build with a message
    /// naming it. `None`: `AX_BRANCH_MAX_FILE_BYTES` if set, else 1 GiB
    /// ([`super::upper::DEFAULT_MAX_FILE_BYTES`], docs/branch.md).
    pub max_file_bytes: Option<u64>,
}

/// What [`build_branch`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchResult {
    /// `refs/heads/ax/<name>`.
    pub branch: String,
    /// The branch's commit.
    #[serde(with = "super::hex")]
    pub commit: ObjectId,
    /// The base commit (`None`: unborn repository).
    #[serde(with = "super::hex_opt")]
    pub base: Option<ObjectId>,
    /// Commits made in the guest and imported (not counting ones already known).
    pub imported_commits: usize,
    /// Whether an "uncommitted changes" commit was made this time.
    pub uncommitted_commit: bool,
    /// Whether the ref was changed (false: it already pointed at `commit`).
    pub updated: bool,
    /// `git diff --stat base ax/<name>`: files changed, lines inserted, lines deleted (binary
    /// files count as changed with 0 lines).
    pub files_changed: u64,
    pub insertions: u64,
    pub deletions: u64,
}

/// Builds `ax/<name>` with the default options (see [`build_branch_with`]).
pub fn build_branch(
    repo: &Path,
    snap: &Snapshot,
    upper: &Path,
    guest_git: Option<&Path>,
    name: &str,
    identity: &Identity,
) -> Result<BranchResult> {
    build_branch_with(
        repo,
        snap,
        upper,
        guest_git,
        name,
        identity,
        &BranchOptions::default(),
    )
}

/// Builds (or moves forward) branch `ax/<name>` in the host repository `repo`:
///
/// 1. copies the snapshot commit's new objects from the private object directory into the
///    host's object store;
/// 2. imports the guest's history: from the guest HEAD (`guest_git`, the agent's `.git` in the
///    upper layer), every object the host lacks is copied (hash-verified) from the guest's loose
///    objects and packs; the guest's alternates are not followed (its borrowed objects are the
///    host's or the snapshot's);
/// 3. computes the final tree = lower (snapshot) tree + upper edits and commits it on top when
///    it differs from the last commit;
/// 4. updates `refs/heads/ax/<name>` with a compare-and-swap against the value read at the
///    start. If the branch already holds ax's "uncommitted changes" commit(s) on top of the same
///    guest HEAD, the new commit goes on top of them (fast-forward); if the guest committed since,
///    the branch is rebuilt on the guest's HEAD. A branch moved by someone else is an error
///    unless `opts.force`.
pub fn build_branch_with(
    repo: &Path,
    snap: &Snapshot,
    upper: &Path,
    guest_git: Option<&Path>,
    name: &str,
    identity: &Identity,
    opts: &BranchOptions,
) -> Result<BranchResult> {
    validate_branch_name(name)?;
    let max_file_bytes = match opts.max_file_bytes {
        Some(m) => m,
        None => max_file_bytes_from_env()?,
    };
    let host = open_host(repo)?;
    let hash = host.object_hash();
    let refname = format!("{BRANCH_PREFIX}{name}");
    let old = match gx(host.try_find_reference(refname.as_str()))? {
        Some(r) => match r.target().try_id() {
            Some(id) => Some(id.to_owned()),
            None => {
                bail!("{refname} is a symbolic ref: delete it (git branch -D ax/{name}) and retry")
            }
        },
        None => None,
    };

    // 1. The snapshot's objects.
    let snap_odb = gix::odb::at(&snap.objects_dir, hash).with_context(|| {
        format!(
            "opening the snapshot objects {}",
            snap.objects_dir.display()
        )
    })?;
    let mut importer = Importer::new(&host);
    if let Some(c) = snap.snapshot_commit {
        importer.import(c, &[&snap_odb as &dyn Source])?;
    }
    if !host.has_object(snap.tree) {
        importer.import(snap.tree, &[&snap_odb as &dyn Source])?;
    }

    // 2. The guest's history.
    let snapshot_commits = importer.commits;
    let start = snap.start_commit();
    let mut top = start;
    let mut guest_tree = None;
    if let Some(gdir) = guest_git {
        let guest = GuestStore::open(gdir, hash, max_file_bytes)?;
        if let Some(head) = guest.head()? {
            if Some(head) != snap.base_commit && Some(head) != snap.snapshot_commit {
                importer.import(head, &[&guest as &dyn Source, &snap_odb as &dyn Source])?;
                top = Some(head);
            }
            guest_tree = Some(commit_tree(&host, head)?);
        }
    }
    let imported_commits = importer.commits - snapshot_commits;

    // 3. The final tree: lower + upper.
    let mut skip: Vec<BString> = opts
        .ax_files
        .iter()
        .map(|s| BString::from(s.as_str()))
        .collect();
    skip.push(".git".into());
    let tracked: Vec<ObjectId> = guest_tree.into_iter().collect();
    let changes = scan_upper_with(&host, upper, snap.tree, &tracked, &skip, max_file_bytes)?;
    let final_tree = apply(&host, snap.tree, &changes)?;

    // 4. Parent, commit, ref.
    let mut parent = top;
    if let Some(o) = old {
        if let Some(p) = ax_chain_base(&host, o)? {
            if Some(p) == top {
                parent = Some(o); // stack on our own earlier commit(s): fast-forward
            } else if !opts.force && !is_ancestor_or_self(&host, p, top, snap.base_commit)? {
                bail!(moved_error(name));
            }
        } else if !opts.force && !is_ancestor_or_self(&host, o, top, snap.base_commit)? {
            bail!(moved_error(name));
        }
    }
    let parent_tree = match parent {
        Some(p) => commit_tree(&host, p)?,
        None => ObjectId::empty_tree(hash),
    };
    let (tip, uncommitted_commit) = if final_tree != parent_tree {
        let commit = gix::objs::Commit {
            tree: final_tree,
            parents: parent.into_iter().collect(),
            author: identity.signature(),
            committer: identity.committer_signature(),
            encoding: None,
            message: format!("{UNCOMMITTED_PREFIX}{name}\n").into(),
            extra_headers: Vec::new(),
        };
        (gx(host.write_object(&commit))?.detach(), true)
    } else {
        match parent {
            Some(p) => (p, false),
            None => bail!(
                "nothing to put on ax/{name}: the repository has no commits and the agent left no files"
            ),
        }
    };

    let updated = old != Some(tip);
    if updated {
        use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
        use gix::refs::Target;
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: format!("ax: branch of agent {name}").into(),
                },
                expected: match old {
                    Some(o) => PreviousValue::MustExistAndMatch(Target::Object(o)),
                    None => PreviousValue::MustNotExist,
                },
                new: Target::Object(tip),
            },
            name: gx(refname.as_str().try_into())?,
            deref: false,
        };
        let sig = identity.committer_signature();
        let mut tbuf = Default::default();
        gx(host.edit_references_as([edit], Some(sig.to_ref(&mut tbuf))))
            .with_context(|| format!("updating {refname} (did it change meanwhile? retry)"))?;
    }

    let base_tree = match snap.base_commit {
        Some(b) => commit_tree(&host, b)?,
        None => ObjectId::empty_tree(hash),
    };
    let tip_tree = commit_tree(&host, tip)?;
    let (files_changed, insertions, deletions) = diff_stat(&host, base_tree, tip_tree)?;
    Ok(BranchResult {
        branch: refname,
        commit: tip,
        base: snap.base_commit,
        imported_commits,
        uncommitted_commit,
        updated,
        files_changed,
        insertions,
        deletions,
    })
}

fn moved_error(name: &str) -> String {
    format!(
        "branch ax/{name} was moved outside ax (it no longer sits on this agent's history): \
         rename it (git branch -m ax/{name} NEW) or delete it, then retry"
    )
}

fn commit_tree(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId> {
    Ok(gx(gx(repo.find_commit(commit))?.tree_id())?.detach())
}

/// If `c` is an "uncommitted changes" commit by ax (possibly several stacked), the first
/// commit below them.
fn ax_chain_base(repo: &gix::Repository, mut c: ObjectId) -> Result<Option<ObjectId>> {
    let mut any = false;
    for _ in 0..10_000 {
        let commit = gx(repo.find_commit(c))?;
        let msg = gx(commit.message_raw())?;
        let parents: Vec<_> = commit.parent_ids().map(|p| p.detach()).collect();
        if !msg.starts_with(UNCOMMITTED_PREFIX.as_bytes()) || parents.len() > 1 {
            return Ok(any.then_some(c));
        }
        any = true;
        match parents.first() {
            Some(p) => c = *p,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Whether `anc` is `tip` or one of its ancestors, walking no further than `stop` (the base).
fn is_ancestor_or_self(
    repo: &gix::Repository,
    anc: ObjectId,
    tip: Option<ObjectId>,
    stop: Option<ObjectId>,
) -> Result<bool> {
    let Some(tip) = tip else { return Ok(false) };
    let mut seen = HashSet::new();
    let mut stack = vec![tip];
    while let Some(c) = stack.pop() {
        if c == anc {
            return Ok(true);
        }
        if Some(c) == stop || !seen.insert(c) || seen.len() > 100_000 {
            continue;
        }
        let commit = gx(repo.find_commit(c))?;
        stack.extend(commit.parent_ids().map(|p| p.detach()));
    }
    Ok(false)
}

/// Applies upper edits to `tree` (writing changed trees into `repo`).
pub(crate) fn apply(
    repo: &gix::Repository,
    tree: ObjectId,
    changes: &[UpperChange],
) -> Result<ObjectId> {
    if changes.is_empty() {
        return Ok(tree);
    }
    let mut editor = gx(repo.edit_tree(tree))?;
    for c in changes {
        match c {
            UpperChange::Write { path, kind, id } => {
                gx(editor.upsert(path.as_bstr(), *kind, *id))?;
            }
            UpperChange::Delete { path } | UpperChange::Opaque { path } => {
                gx(editor.remove(path.as_bstr()))?;
            }
        }
    }
    Ok(gx(editor.write())?.detach())
}

/// `git diff --stat` numbers between two trees, without rename detection.
fn diff_stat(repo: &gix::Repository, old: ObjectId, new: ObjectId) -> Result<(u64, u64, u64)> {
    if old == new {
        return Ok((0, 0, 0));
    }
    let old_tree = gx(repo.find_tree(old))?;
    let new_tree = gx(repo.find_tree(new))?;
    let mut cache = gx(repo.diff_resource_cache_for_tree_diff())?;
    let (mut files, mut ins, mut del) = (0u64, 0u64, 0u64);
    let mut platform = gx(old_tree.changes())?;
    platform.options(|o| {
        o.track_rewrites(None);
    });
    gx(platform.for_each_to_obtain_tree(&new_tree, |change| {
        if change.entry_mode().is_tree() {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        files += 1;
        if let Some(counts) = change
            .diff(&mut cache)
            .ok()
            .and_then(|mut p| p.line_counts().ok())
            .flatten()
        {
            ins += u64::from(counts.insertions);
            del += u64::from(counts.removals);
        }
        cache.clear_resource_cache_keep_allocation();
        Ok::<_, gix::Error>(std::ops::ControlFlow::Continue(()))
    }))?;
    Ok((files, ins, del))
}

/// Somewhere objects can be read from.
trait Source {
    /// Reads object `id` into `buf`, returning its kind.
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<Option<gix::objs::Kind>>;
}

impl Source for gix::odb::Handle {
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<Option<gix::objs::Kind>> {
        Ok(gx(self.try_find(id, buf))?.map(|d| d.kind))
    }
}

/// The guest's own objects (loose + packs), read without following its alternates and
/// without following symlinks: the guest wrote them and is not trusted, and may change them
/// while they are read. Every file is opened below the `.git` directory's descriptor
/// ([`Dir`]); packs are mapped through the descriptor opened that way (`/proc/self/fd/N`).
struct GuestStore {
    git: Dir,
    packs: Vec<gix::odb::pack::Bundle>,
    /// The largest object read (bytes, inflated).
    max_bytes: u64,
}

/// Opens `p` (already opened safely as `f`) through its descriptor for a gix reader.
fn fd_path(f: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

impl GuestStore {
    fn open(git_dir: &Path, hash: gix::hash::Kind, max_bytes: u64) -> Result<Self> {
        let git = Dir::open(git_dir).with_context(|| {
            format!(
                "opening the guest's .git {} (it must be a directory, not a symlink)",
                git_dir.display()
            )
        })?;
        let mut packs = Vec::new();
        if let Some(pack_dir) = git.dir(Path::new("objects/pack"))? {
            let mut idx: Vec<_> = pack_dir
                .names()?
                .into_iter()
                .filter(|n| Path::new(n).extension().is_some_and(|x| x == "idx"))
                .collect();
            idx.sort();
            for name in idx {
                let pack_name = Path::new(&name).with_extension("pack");
                let (Some((idx_f, _)), Some((pack_f, _))) =
                    (pack_dir.file(Path::new(&name))?, pack_dir.file(&pack_name)?)
                else {
                    continue;
                };
                let what = || {
                    format!(
                        "opening guest pack {}",
                        git_dir.join("objects/pack").join(&name).display()
                    )
                };
                let index = gx(gix::odb::pack::index::File::at(fd_path(&idx_f), hash))
                    .with_context(what)?;
                let pack = gx(gix::odb::pack::data::File::at(fd_path(&pack_f), hash))
                    .with_context(what)?;
                packs.push(gix::odb::pack::Bundle { pack, index });
            }
        }
        Ok(GuestStore {
            git,
            packs,
            max_bytes,
        })
    }

    /// The guest's HEAD commit, `None` when unborn.
    fn head(&self) -> Result<Option<ObjectId>> {
        let mut name: BString = "HEAD".into();
        for _ in 0..5 {
            let value = if name == "HEAD" {
                self.read_small(Path::new("HEAD"))?
            } else {
                gx(gix::validate::reference::name(name.as_bstr()))
                    .with_context(|| format!("the guest's HEAD names a bad ref {name:?}"))?;
                match self.read_small(super::bpath(name.as_bstr()))? {
                    Some(v) => Some(v),
                    None => self
                        .packed_ref(name.as_bstr())?
                        .map(|id| id.to_string().into_bytes()),
                }
            };
            let Some(value) = value else {
                return Ok(None); // unborn branch
            };
            let value = value.trim();
            if let Some(target) = value.strip_prefix(b"ref:") {
                name = target.trim().into();
                continue;
            }
            return Ok(Some(ObjectId::from_hex(value).map_err(|e| {
                anyhow::anyhow!("the guest's {name} is not an object id: {e}")
            })?));
        }
        bail!("the guest's HEAD is a chain of symbolic refs that is too long")
    }

    /// Reads a small file of the guest's `.git` (at most 64 KiB).
    fn read_small(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        self.git
            .read(rel, 64 << 10)
            .with_context(|| format!("reading the guest's .git/{}", rel.display()))
    }

    fn packed_ref(&self, name: &gix::bstr::BStr) -> Result<Option<ObjectId>> {
        let Some(data) = self
            .git
            .read(Path::new("packed-refs"), 64 << 20)
            .context("reading the guest's .git/packed-refs")?
        else {
            return Ok(None);
        };
        for line in data.lines() {
            if line.starts_with(b"#") || line.starts_with(b"^") {
                continue;
            }
            if let Some((hex, n)) = line.split_once_str(" ") {
                if n == name.as_bytes() {
                    return Ok(ObjectId::from_hex(hex).ok());
                }
            }
        }
        Ok(None)
    }

    /// A loose object: inflated while reading, its header checked against the size limit
    /// before its body is read.
    fn read_loose(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<Option<gix::objs::Kind>> {
        use std::io::Read;
        let hex = id.to_string();
        let rel = PathBuf::from(format!("objects/{}/{}", &hex[..2], &hex[2..]));
        let Some((f, _)) = self.git.file(&rel)? else {
            return Ok(None);
        };
        let mut z = flate2::read::ZlibDecoder::new(std::io::BufReader::new(f));
        let mut header = Vec::with_capacity(32);
        let mut byte = [0u8; 1];
        loop {
            z.read_exact(&mut byte)
                .with_context(|| format!("the guest's loose object {id} is corrupt"))?;
            header.push(byte[0]);
            if byte[0] == 0 {
                break;
            }
            anyhow::ensure!(
                header.len() < 64,
                "the guest's loose object {id} is corrupt"
            );
        }
        let (kind, size, _) = gx(gix::objs::decode::loose_header(&header))
            .with_context(|| format!("the guest's loose object {id} is corrupt"))?;
        self.check_size(id, size)?;
        buf.clear();
        z.take(size).read_to_end(buf)?;
        anyhow::ensure!(
            buf.len() as u64 == size,
            "the guest's loose object {id} is truncated"
        );
        Ok(Some(kind))
    }

    fn check_size(&self, id: &gix::oid, size: u64) -> Result<()> {
        if size > self.max_bytes {
            bail!(
                "the agent's commit holds object {id} of {size} bytes, above the branch's file size \
                 limit of {} bytes (setting {}, docs/branch.md): remove the file from the agent's \
                 commits, or raise the limit",
                self.max_bytes,
                super::upper::MAX_FILE_ENV
            );
        }
        Ok(())
    }
}

impl Source for GuestStore {
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<Option<gix::objs::Kind>> {
        if let Some(k) = self.read_loose(id, buf)? {
            return Ok(Some(k));
        }
        let mut inflate = gix::zlib::Inflate::default();
        for p in &self.packs {
            if let Some(i) = p.index.lookup(id) {
                // A whole object stored in the pack: its size is in the entry header. (Deltas
                // are checked after decoding, below.)
                let entry = gx(p.pack.entry(p.index.pack_offset_at_index(i)))?;
                if !entry.header.is_delta() {
                    self.check_size(id, entry.decompressed_size)?;
                }
            }
            let kind = gx(p.find(id, buf, &mut inflate, &mut gix::odb::pack::cache::Never))?
                .map(|(d, _)| d.kind);
            if let Some(kind) = kind {
                self.check_size(id, buf.len() as u64)?;
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }
}

/// Copies objects the host lacks into the host's object store, children before parents, so
/// an object present in the host always has its closure present too.
/// Blobs (they have no children) are written as soon as they are read, so at most one blob
/// is held in memory; trees, commits and tags wait for their children.
struct Importer<'r> {
    host: &'r gix::Repository,
    done: HashSet<ObjectId>,
    commits: usize,
}

impl<'r> Importer<'r> {
    fn new(host: &'r gix::Repository) -> Self {
        Importer {
            host,
            done: HashSet::new(),
            commits: 0,
        }
    }

    fn import(&mut self, root: ObjectId, sources: &[&dyn Source]) -> Result<()> {
        let hash = self.host.object_hash();
        let empty_tree = ObjectId::empty_tree(hash);
        let mut pending: HashMap<ObjectId, (gix::objs::Kind, Vec<u8>)> = HashMap::new();
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                if let Some((kind, data)) = pending.remove(&id) {
                    let written = gx(self.host.objects.write_buf(kind, &data))?;
                    anyhow::ensure!(written == id, "object {id} changed while importing");
                    if kind == gix::objs::Kind::Commit {
                        self.commits += 1;
                    }
                    self.done.insert(id);
                }
                continue;
            }
            if self.done.contains(&id) || pending.contains_key(&id) || self.host.has_object(id) {
                continue;
            }
            let mut buf = Vec::new();
            let mut kind = None;
            for s in sources {
                if let Some(k) = s.read(&id, &mut buf)? {
                    kind = Some(k);
                    break;
                }
            }
            let kind = match kind {
                Some(k) => k,
                None if id == empty_tree => gix::objs::Kind::Tree,
                None => bail!(
                    "object {id} is in neither the host repository nor the agent's .git: \
                     the guest's object store is incomplete"
                ),
            };
            let actual = gx(gix::objs::compute_hash(hash, kind, &buf))?;
            anyhow::ensure!(
                actual == id,
                "the guest's object {id} is corrupt (hashes to {actual})"
            );
            stack.push((id, true));
            match kind {
                gix::objs::Kind::Commit => {
                    let c = gx(gix::objs::CommitRef::from_bytes(&buf, hash))?;
                    stack.push((c.tree(), false));
                    stack.extend(c.parents().map(|p| (p, false)));
                }
                gix::objs::Kind::Tree => {
                    let t = gx(gix::objs::TreeRef::from_bytes(&buf, hash))?;
                    for e in t.entries {
                        if !e.mode.is_commit() {
                            stack.push((e.oid.to_owned(), false));
                        }
                    }
                }
                gix::objs::Kind::Tag => {
                    let t = gx(gix::objs::TagRef::from_bytes(&buf, hash))?;
                    stack.push((t.target(), false));
                }
                gix::objs::Kind::Blob => {
                    stack.pop();
                    let written = gx(self.host.objects.write_buf(kind, &buf))?;
                    anyhow::ensure!(written == id, "object {id} changed while importing");
                    self.done.insert(id);
                    continue;
                }
            }
            pending.insert(id, (kind, buf));
        }
        Ok(())
    }
}
