//! The lower layer served straight from a git object database: the snapshot's root **tree**
//! (Documentation/gitformat-*: tree entries, blob objects), read on demand with gix.
//!
//! Nothing is materialised: a LOOKUP walks cached, parsed trees; attributes come from the tree
//! entry (mode) and the blob header (size, read without inflating the whole blob when the
//! object database allows it); READ/READLINK/copy-up inflate the blob. Objects are immutable
//! by construction (content-addressed), so every cache here is valid forever and the guest may
//! cache the lower layer as long as it likes.
//!
//! Object lookup order: the private objects directory (`--objects`, the snapshot's new blobs
//! and trees), then the host repository's object database (with its own alternates).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use gix::hash::ObjectId;
use gix::objs::tree::EntryKind;
use gix::objs::{Find as _, FindHeader as _};

use super::sys::{self, err};

/// What a tree entry is, as the union presents it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitKind {
    /// A tree: a directory (0755).
    Dir,
    /// A blob with mode 100644: a regular file (0644).
    File,
    /// A blob with mode 100755: an executable regular file (0755).
    Exec,
    /// A blob with mode 120000: a symlink whose target is the blob's content.
    Link,
    /// A gitlink (mode 160000, a submodule commit): an empty directory (0755); the submodule's
    /// objects are not in this repository.
    Gitlink,
}

impl GitKind {
    fn from_entry(k: EntryKind) -> Self {
        match k {
            EntryKind::Tree => GitKind::Dir,
            EntryKind::Blob => GitKind::File,
            EntryKind::BlobExecutable => GitKind::Exec,
            EntryKind::Link => GitKind::Link,
            EntryKind::Commit => GitKind::Gitlink,
        }
    }

    /// `st_mode` (type and permission bits).
    pub fn mode(self) -> u32 {
        match self {
            GitKind::Dir | GitKind::Gitlink => libc::S_IFDIR | 0o755,
            GitKind::File => libc::S_IFREG | 0o644,
            GitKind::Exec => libc::S_IFREG | 0o755,
            GitKind::Link => libc::S_IFLNK | 0o777,
        }
    }

    /// Is this a directory in the union (tree or gitlink)?
    pub fn is_dir(self) -> bool {
        matches!(self, GitKind::Dir | GitKind::Gitlink)
    }
}

/// One node of the git lower: an object id and how its tree entry presents it.
#[derive(Clone, Copy, Debug)]
pub struct GitNode {
    /// The tree, blob or (gitlink) commit id.
    pub oid: ObjectId,
    /// How the entry is presented.
    pub kind: GitKind,
}

/// Options of a [`GitLower`].
#[derive(Clone, Debug)]
pub struct GitOptions {
    /// `st_mtime`/`st_ctime`/`st_atime` of every lower node (seconds since the epoch): the base
    /// commit's committer time unless given.
    pub mtime: Option<i64>,
    /// `st_uid` of every lower node.
    pub uid: u32,
    /// `st_gid` of every lower node.
    pub gid: u32,
    /// Budget of the inflated-blob LRU cache, in bytes. Blobs larger than a quarter of it are
    /// never cached (a READ handle gets its own unnamed temporary file instead).
    pub blob_cache_bytes: usize,
    /// Budget of the parsed-tree cache, in (estimated) bytes.
    pub tree_cache_bytes: usize,
}

impl Default for GitOptions {
    fn default() -> Self {
        Self {
            mtime: None,
            uid: 0,
            gid: 0,
            blob_cache_bytes: 64 << 20,
            tree_cache_bytes: 32 << 20,
        }
    }
}

struct Entry {
    name: Vec<u8>,
    node: GitNode,
}

/// A parsed tree, entries sorted by name (byte order) for binary search.
struct Tree {
    entries: Vec<Entry>,
}

impl Tree {
    fn get(&self, name: &[u8]) -> Option<GitNode> {
        self.entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| self.entries[i].node)
    }
}

/// A small LRU keyed by object id with a byte budget.
struct Lru<V: Clone> {
    map: HashMap<ObjectId, (V, u64, usize)>,
    order: BTreeMap<u64, ObjectId>,
    tick: u64,
    bytes: usize,
    cap: usize,
}

impl<V: Clone> Lru<V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            cap,
        }
    }

    fn get(&mut self, k: &ObjectId) -> Option<V> {
        self.tick += 1;
        let t = self.tick;
        let (v, old, _) = self.map.get_mut(k)?;
        self.order.remove(old);
        *old = t;
        self.order.insert(t, *k);
        Some(v.clone())
    }

    fn insert(&mut self, k: ObjectId, v: V, cost: usize) {
        if cost > self.cap {
            return;
        }
        if let Some((_, t, c)) = self.map.remove(&k) {
            self.order.remove(&t);
            self.bytes -= c;
        }
        while self.bytes + cost > self.cap {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, c)) = self.map.remove(&old) {
                self.bytes -= c;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, k);
        self.map.insert(k, (v, self.tick, cost));
        self.bytes += cost;
    }
}

type Odb = gix::odb::HandleArc;

/// The snapshot tree of a repository, served as a read-only directory tree.
pub struct GitLower {
    /// Object databases, searched in order (private objects dir first).
    odbs: Mutex<Vec<Odb>>,
    hash: gix::hash::Kind,
    root: ObjectId,
    mtime: i64,
    opts: GitOptions,
    trees: Mutex<Lru<Arc<Tree>>>,
    blobs: Mutex<Lru<Arc<Vec<u8>>>>,
    sizes: Mutex<HashMap<ObjectId, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An object database problem: logged, EIO to the guest.
fn odb_err(what: &str, oid: &ObjectId, e: impl std::fmt::Display) -> io::Error {
    log::error!("git lower: {what} {oid}: {e}");
    err(libc::EIO)
}

fn open_store(objects: PathBuf, hash: gix::hash::Kind) -> io::Result<Odb> {
    if !objects.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not an objects directory", objects.display()),
        ));
    }
    let store = gix::odb::Store::at_opts(
        objects,
        hash,
        &mut std::iter::empty(),
        gix::odb::store::init::Options::default(),
    )?;
    Ok(Arc::new(store).to_cache_arc())
}

impl GitLower {
    /// Opens the object database of the repository at `git_dir` (a `.git` directory or a bare
    /// repository), plus `extra_objects` (searched first), and checks that `rev` is there.
    /// `rev` is a tree id, or a commit id (its tree is served; its committer time is the
    /// default mtime). With a tree id and no `opts.mtime`, the mtime is the committer time of
    /// the repository's `HEAD` commit.
    pub fn open(
        git_dir: &Path,
        extra_objects: Option<&Path>,
        rev: &str,
        opts: GitOptions,
    ) -> io::Result<Self> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let repo = gix::open_opts(git_dir, gix::open::Options::isolated()).map_err(|e| {
            invalid(format!(
                "{} is not a git repository: {e}",
                git_dir.display()
            ))
        })?;
        let hash = repo.object_hash();
        let objects = repo.common_dir().join("objects");
        let head_time = repo
            .head_commit()
            .ok()
            .and_then(|c| c.time().ok())
            .map(|t| t.seconds);
        drop(repo);
        let oid = ObjectId::from_hex(rev.as_bytes())
            .map_err(|e| invalid(format!("--tree {rev:?} is not a full object id: {e}")))?;
        let mut odbs = Vec::new();
        if let Some(x) = extra_objects {
            odbs.push(open_store(x.to_path_buf(), hash)?);
        }
        odbs.push(open_store(objects, hash)?);
        let mut me = Self {
            odbs: Mutex::new(odbs),
            hash,
            root: oid,
            mtime: 0,
            trees: Mutex::new(Lru::new(opts.tree_cache_bytes)),
            blobs: Mutex::new(Lru::new(opts.blob_cache_bytes)),
            sizes: Mutex::new(HashMap::new()),
            opts,
        };
        let (kind, data) = me
            .find(&oid)?
            .ok_or_else(|| invalid(format!("object {oid} is not in the object database")))?;
        let mut commit_time = None;
        match kind {
            gix::objs::Kind::Tree => {}
            gix::objs::Kind::Commit => {
                let c = gix::objs::CommitRef::from_bytes(&data, hash)
                    .map_err(|e| invalid(format!("commit {oid}: {e}")))?;
                me.root = c.tree();
                commit_time = c.time().ok().map(|t| t.seconds);
            }
            k => return Err(invalid(format!("{oid} is a {k}, not a tree or commit"))),
        }
        me.tree(&me.root.clone())?;
        me.mtime = me.opts.mtime.or(commit_time).or(head_time).unwrap_or(0);
        Ok(me)
    }

    /// The root tree id being served.
    pub fn root_tree(&self) -> ObjectId {
        self.root
    }

    /// The root node.
    pub fn root(&self) -> GitNode {
        GitNode {
            oid: self.root,
            kind: GitKind::Dir,
        }
    }

    /// Reads an object: kind and inflated data; `None` when no database has it.
    fn find(&self, oid: &ObjectId) -> io::Result<Option<(gix::objs::Kind, Vec<u8>)>> {
        let odbs = lock(&self.odbs);
        for db in odbs.iter() {
            let mut buf = Vec::new();
            // The object is inflated into `buf`; keep that allocation instead of copying it.
            let found = db
                .try_find(oid, &mut buf)
                .map(|o| o.map(|d| (d.kind, d.data.as_ptr() as usize, d.data.len())));
            match found {
                Ok(Some((kind, ptr, len))) => {
                    let base = buf.as_ptr() as usize;
                    if ptr == base && len <= buf.len() {
                        buf.truncate(len);
                        return Ok(Some((kind, buf)));
                    }
                    if ptr > base && ptr + len <= base + buf.len() {
                        return Ok(Some((kind, buf[ptr - base..ptr - base + len].to_vec())));
                    }
                    // Data not in our buffer (a cache of the handle): copy it.
                    let mut b2 = Vec::new();
                    return match db.try_find(oid, &mut b2) {
                        Ok(Some(d)) => Ok(Some((d.kind, d.data.to_vec()))),
                        Ok(None) => Ok(None),
                        Err(e) => Err(odb_err("reading", oid, e)),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(odb_err("reading", oid, e)),
            }
        }
        Ok(None)
    }

    fn find_kind(&self, oid: &ObjectId, want: gix::objs::Kind) -> io::Result<Vec<u8>> {
        match self.find(oid)? {
            Some((k, data)) if k == want => Ok(data),
            Some((k, _)) => Err(odb_err("unexpected object kind", oid, k)),
            None => Err(odb_err("missing object", oid, "not found")),
        }
    }

    /// The parsed tree `oid` (cached).
    fn tree(&self, oid: &ObjectId) -> io::Result<Arc<Tree>> {
        if let Some(t) = lock(&self.trees).get(oid) {
            return Ok(t);
        }
        let data = self.find_kind(oid, gix::objs::Kind::Tree)?;
        let mut entries = Vec::new();
        for e in gix::objs::TreeRefIter::from_bytes(&data, self.hash) {
            let e = e.map_err(|e| odb_err("parsing tree", oid, e))?;
            entries.push(Entry {
                name: e.filename.to_vec(),
                node: GitNode {
                    oid: e.oid.to_owned(),
                    kind: GitKind::from_entry(e.mode.kind()),
                },
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let cost = data.len() + entries.len() * std::mem::size_of::<Entry>() + 64;
        let t = Arc::new(Tree { entries });
        lock(&self.trees).insert(*oid, t.clone(), cost);
        Ok(t)
    }

    /// The size of a blob, from its header (cached).
    fn blob_size(&self, oid: &ObjectId) -> io::Result<u64> {
        if let Some(&s) = lock(&self.sizes).get(oid) {
            return Ok(s);
        }
        let size = {
            let odbs = lock(&self.odbs);
            let mut found = None;
            for db in odbs.iter() {
                match db.try_header(oid) {
                    Ok(Some(h)) => {
                        found = Some(h.size);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(odb_err("reading the header of", oid, e)),
                }
            }
            found.ok_or_else(|| odb_err("missing object", oid, "not found"))?
        };
        lock(&self.sizes).insert(*oid, size);
        Ok(size)
    }

    /// The attributes of a node (`st_ino` is set by the union).
    pub fn stat(&self, node: &GitNode) -> io::Result<libc::stat64> {
        // SAFETY: stat64 is plain data; all-zero is valid.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = node.kind.mode();
        st.st_uid = self.opts.uid;
        st.st_gid = self.opts.gid;
        st.st_blksize = 4096;
        let size = if node.kind.is_dir() {
            st.st_nlink = 2;
            4096
        } else {
            st.st_nlink = 1;
            self.blob_size(&node.oid)?
        };
        st.st_size = size as i64;
        st.st_blocks = size.div_ceil(512) as i64;
        st.st_atime = self.mtime;
        st.st_mtime = self.mtime;
        st.st_ctime = self.mtime;
        Ok(st)
    }

    /// `name` in the directory `dir`; `Ok(None)` when absent. A gitlink is an empty directory.
    pub fn lookup(&self, dir: &GitNode, name: &[u8]) -> io::Result<Option<GitNode>> {
        match dir.kind {
            GitKind::Dir => Ok(self.tree(&dir.oid)?.get(name)),
            GitKind::Gitlink => Ok(None),
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    /// The names in a directory with their `DT_*` types.
    pub fn list(&self, dir: &GitNode) -> io::Result<Vec<(Vec<u8>, u32)>> {
        match dir.kind {
            GitKind::Dir => Ok(self
                .tree(&dir.oid)?
                .entries
                .iter()
                .map(|e| (e.name.clone(), sys::dtype(e.node.kind.mode())))
                .collect()),
            GitKind::Gitlink => Ok(Vec::new()),
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    /// A symlink's target (the blob's content).
    pub fn readlink(&self, node: &GitNode) -> io::Result<Vec<u8>> {
        if node.kind != GitKind::Link {
            return Err(err(libc::EINVAL));
        }
        let t = self.blob(&node.oid)?;
        if t.is_empty() || t.len() >= libc::PATH_MAX as usize || t.contains(&0) {
            log::warn!("git lower: symlink blob {} is not a valid target", node.oid);
            return Err(err(libc::EIO));
        }
        Ok(t.to_vec())
    }

    /// Is this blob small enough for the shared LRU (else it gets a temporary file per open)?
    fn cacheable(&self, size: u64) -> bool {
        size <= (self.opts.blob_cache_bytes / 4) as u64
    }

    /// The inflated blob (through the LRU when it fits).
    pub fn blob(&self, oid: &ObjectId) -> io::Result<Arc<Vec<u8>>> {
        if let Some(b) = lock(&self.blobs).get(oid) {
            return Ok(b);
        }
        let data = Arc::new(self.find_kind(oid, gix::objs::Kind::Blob)?);
        lock(&self.sizes).insert(*oid, data.len() as u64);
        if self.cacheable(data.len() as u64) {
            lock(&self.blobs).insert(*oid, data.clone(), data.len() + 64);
        }
        Ok(data)
    }

    /// Opens a regular file for reading: small blobs are served from memory (shared through
    /// the LRU), a large blob is inflated once into an unnamed temporary file created in
    /// `tmp_dir` (`O_TMPFILE`: never visible, freed on close) so open handles do not pin memory.
    pub fn open_read(&self, node: &GitNode, tmp_dir: &OwnedFd) -> io::Result<GitFile> {
        if !matches!(node.kind, GitKind::File | GitKind::Exec) {
            return Err(err(if node.kind.is_dir() {
                libc::EISDIR
            } else {
                libc::ENXIO
            }));
        }
        let size = self.blob_size(&node.oid)?;
        if self.cacheable(size) {
            return Ok(GitFile::Mem(self.blob(&node.oid)?));
        }
        let out = sys::openat(tmp_dir, b".", libc::O_TMPFILE | libc::O_RDWR, 0o600)?;
        self.write_blob(&node.oid, &out)?;
        Ok(GitFile::Fd(sys::reopen(&out, libc::O_RDONLY)?))
    }

    /// Writes a blob's content into `out` from offset 0 (copy-up) and sets its size.
    pub fn write_blob(&self, oid: &ObjectId, out: &OwnedFd) -> io::Result<()> {
        let data = self.blob(oid)?;
        // Zero pages stay holes: write only the non-zero 64 KiB chunks.
        const CHUNK: usize = 64 << 10;
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            sys::pwrite_all(out, chunk, (i * CHUNK) as u64)?;
        }
        // SAFETY: plain syscall on an owned fd.
        if unsafe { libc::ftruncate64(out.as_raw_fd(), data.len() as i64) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// An open lower file of a git lower.
pub enum GitFile {
    /// A blob in memory (shared with the LRU).
    Mem(Arc<Vec<u8>>),
    /// A large blob inflated into an unnamed temporary file.
    Fd(OwnedFd),
}

#[cfg(test)]
mod tests;
