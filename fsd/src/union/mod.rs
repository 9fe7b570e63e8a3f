//! The union file system served to the guest: a read-only lower directory (the repository
//! snapshot) under a per-agent upper directory kept in overlayfs's on-disk format
//! (Documentation/filesystems/overlayfs.rst), so `mount -t overlay -o lowerdir=L,upperdir=U`
//! shows the same tree. See docs/fsd.md for the format and the rules.
//!
//! Node ids are assigned per share-relative path and stay stable for the session (a rename moves
//! the id with the path; an unlinked path's id is retired). The guest kernel resolves symlinks
//! itself: the host only ever opens names with `O_NOFOLLOW` relative to a layer root.
//!
//! Layering, bottom up: a module uses only modules above it in this list (and `crate::overlay`,
//! the on-disk rules, or `crate::fuse`/`crate::journal` where named), never one below it.
//! - [`sys`]: checked syscall wrappers over fds, errno → `io::Error` (`err`), hole-keeping data
//!   copy (`copy_data`); uses nothing here.
//! - [`path`]: share-relative paths (validate, join, split, prefix test); uses `sys`.
//! - `inodes`: node ids per path, stable for the session; uses `crate::fuse::abi`.
//! - `cache`: the resolution cache, path → state, generic over the state; uses `path`.
//! - [`git`]: a git tree as lower layer (gix object database); uses `sys`.
//! - [`lower`]: the lower layer, a directory or a git tree; uses `git`, `sys`.
//! - `whiteout`: whiteouts and opaque marks in the upper layer (`Marks`); uses `sys` and
//!   `crate::overlay`.
//! - [`layers`]: resolution through both layers, copy-up, merged listings (`Layers`,
//!   `Layered`); uses `cache`, `lower`, `path`, `sys`, `whiteout`, `crate::overlay`.
//! - this module: [`UnionFs`], the [`FileSystem`] over the layers; uses all of the above,
//!   `crate::fuse` and `crate::journal`.
//! - `exchange`: `RENAME_EXCHANGE`, more of `impl UnionFs` in its own file; uses this module's
//!   `UnionFs` internals, `path`, `sys`.
//!
//! Unit tests (`tests`, and `tests` under `cache`, `git`, `whiteout`) drive the whole union.

mod cache;
mod exchange;
pub mod freeze;
pub mod git;
mod inodes;
pub mod layers;
pub mod lower;
pub mod owner;
pub mod path;
pub mod quota;
pub mod sys;
mod whiteout;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::fuse::abi::{fopen, ROOT_ID};
use crate::fuse::filesystem::{Context, DirEntry, Entry, FileSystem, SetAttr, Stat, TimeSpec};
use crate::fuse::io::{ReadSink, VecSink, WriteSource};
use crate::journal::{Journal, Kind};
use inodes::Inodes;
use layers::{Layered, Layers};
use lower::{Lower, LowerFile};
use path::{join, split, validate_name};
use sys::err;

/// Options of a [`UnionFs`].
#[derive(Clone, Debug)]
pub struct UnionOptions {
    /// How long the guest may cache names and attributes (`entry_valid` / `attr_valid`). Safe to
    /// make long: the lower layer never changes and every upper change comes through us.
    pub cache_timeout: Duration,
    /// Timeout for names and attributes of nodes that are only in an *immutable* lower layer (a
    /// git tree): they can only change through this guest, whose kernel sees every change.
    pub immutable_lower_timeout: Duration,
    /// Write whiteouts as xattr whiteouts (zero-size file + `*.overlay.whiteout`, parent marked
    /// `*.overlay.opaque=x`) even when `mknod` of a 0:0 device is allowed (docs/fsd.md; tests).
    /// Without it they are used only once `mknod` is refused.
    pub xattr_whiteouts: bool,
    /// Disk quota of the upper layer in bytes (apparent sizes of its regular files,
    /// [`quota`]); `None`: unlimited.
    pub quota: Option<u64>,
}

impl Default for UnionOptions {
    fn default() -> Self {
        Self {
            cache_timeout: Duration::from_secs(1),
            immutable_lower_timeout: Duration::from_secs(86400),
            xattr_whiteouts: false,
            quota: None,
        }
    }
}

/// An open file: a host fd, or a git blob held in memory (read-only).
enum Handle {
    File(File),
    Mem(Arc<Vec<u8>>),
}

impl Handle {
    fn from_lower(f: LowerFile) -> Self {
        match f {
            // SAFETY: we own the fd.
            LowerFile::Fd(fd) => Handle::File(unsafe { File::from_raw_fd(fd.into_raw_fd()) }),
            LowerFile::Mem(m) => Handle::Mem(m),
        }
    }

    /// The host file; EBADF for a read-only in-memory blob (its handle was opened read-only,
    /// so the guest kernel sends no write on it).
    fn file(&self) -> io::Result<&File> {
        match self {
            Handle::File(f) => Ok(f),
            Handle::Mem(_) => Err(err(libc::EBADF)),
        }
    }
}

/// What [`UnionFs::prepare_create`] found out.
struct Prepared {
    /// The new node's share-relative path.
    path: Vec<u8>,
    /// Its upper parent directory (`O_PATH`).
    pdir: Arc<OwnedFd>,
    /// A whiteout was removed to make room.
    had_whiteout: bool,
    /// The lower layer has the name (under a visible lower parent).
    lower_exists: bool,
}

/// The lower + upper union, implementing [`FileSystem`].
pub struct UnionFs {
    layers: Layers,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Serialises namespace changes and copy-ups (reads go without it).
    meta: Mutex<()>,
    journal: Arc<Journal>,
    opts: UnionOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kind_of(st: &libc::stat64) -> Kind {
    if sys::is_dir(st) {
        Kind::Dir
    } else {
        Kind::File
    }
}

fn timespec(t: TimeSpec) -> libc::timespec {
    match t {
        TimeSpec::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeSpec::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: i64::from(ns),
        },
    }
}

/// Open flags we pass through to the host on OPEN/CREATE; the rest (O_CREAT, O_EXCL,
/// O_NOCTTY, O_NOFOLLOW, O_PATH, O_TMPFILE, ...) are dropped.
fn sanitize_open_flags(flags: u32) -> i32 {
    let f = flags as i32;
    f & (libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NONBLOCK
        | libc::O_NOATIME)
}

/// How many resolved nodes to keep (each may hold two `O_PATH` fds): raises the soft
/// `RLIMIT_NOFILE` to the hard limit and leaves half of it to the cache, at most 100 000 nodes.
fn cache_capacity() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    let fds = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    (fds.saturating_sub(512) / 4).clamp(64, 100_000)
}

impl UnionFs {
    /// Opens the two layer roots. The upper directory must exist; the lower is never written.
    pub fn new(
        lower: &Path,
        upper: &Path,
        journal: Arc<Journal>,
        opts: UnionOptions,
    ) -> io::Result<Self> {
        Self::with_lower(Lower::Dir(sys::open_root(lower)?), upper, journal, opts)
    }

    /// A union over any [`Lower`] (a directory or a git tree, see [`git::GitLower`]).
    pub fn with_lower(
        lower: Lower,
        upper: &Path,
        journal: Arc<Journal>,
        opts: UnionOptions,
    ) -> io::Result<Self> {
        // SAFETY: plain syscall.
        let root = unsafe { libc::geteuid() } == 0;
        let upper = sys::open_root(upper)?;
        let layers = Layers {
            lower,
            quota: quota::Quota::new(opts.quota, &upper)?,
            upper,
            marks: whiteout::Marks::new(root, opts.xattr_whiteouts),
            frozen: None,
            cache: cache::ResolveCache::new(cache_capacity()),
        };
        Ok(Self {
            layers,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            meta: Mutex::new(()),
            journal,
            opts,
        })
    }

    /// Shows only the lower nodes `frozen` admits (a directory lower frozen at the agent's
    /// start, [`freeze`]). Call before serving.
    pub fn with_frozen_lower(mut self, frozen: freeze::Frozen) -> Self {
        self.layers.frozen = Some(frozen);
        self.layers.invalidate_tree(b"");
        self
    }

    /// Bytes the upper layer's quota counts now.
    pub fn quota_used(&self) -> u64 {
        self.layers.quota.used()
    }

    /// The change journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The xattr name that marks opaque directories in the upper layer.
    pub fn opaque_xattr(&self) -> &'static [u8] {
        self.layers.marks.opaque
    }

    /// The xattr that marks an xattr whiteout (`*.overlay.whiteout`).
    pub fn whiteout_xattr(&self) -> &'static [u8] {
        self.layers.marks.whiteout
    }

    fn path(&self, ino: u64) -> io::Result<Vec<u8>> {
        lock(&self.inodes)
            .path(ino)
            .ok_or_else(|| err(libc::ENOENT))
    }

    fn child(&self, parent: u64, name: &[u8]) -> io::Result<Vec<u8>> {
        validate_name(name)?;
        Ok(join(&self.path(parent)?, name))
    }

    /// How long the guest may cache this node's name and attributes.
    fn timeout(&self, r: &Layered) -> Duration {
        if r.upper.is_none() && self.layers.lower.immutable() {
            self.opts.immutable_lower_timeout
        } else {
            self.opts.cache_timeout
        }
    }

    fn entry_for(&self, path: &[u8], r: &Layered) -> io::Result<Entry> {
        let mut st = self.layers.attr(r)?;
        let ino = lock(&self.inodes).ino_for(path);
        st.st_ino = ino;
        let t = self.timeout(r);
        Ok(Entry {
            ino,
            generation: 0,
            attr: st,
            attr_timeout: t,
            entry_timeout: t,
        })
    }

    fn lookup_path(&self, path: &[u8]) -> io::Result<Entry> {
        let r = self.layers.resolve(path)?;
        self.entry_for(path, &r)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn add_file(&self, fd: OwnedFd) -> u64 {
        let fh = self.new_fh();
        // SAFETY: we own the fd.
        let file = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
        self.layers.quota.opened(&file);
        lock(&self.files).insert(fh, Arc::new(Handle::File(file)));
        fh
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.new_fh();
        if let Handle::File(f) = &h {
            self.layers.quota.opened(f);
        }
        lock(&self.files).insert(fh, Arc::new(h));
        fh
    }

    fn file(&self, fh: u64) -> io::Result<Arc<Handle>> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    /// Common start of every create-like op: the new path must not exist. Returns its path,
    /// the upper parent (copied up), whether a whiteout was removed to make room (then a new
    /// directory must be opaque) and whether the lower layer has the name. Probes the name
    /// once per layer from the (cached) parent.
    fn prepare_create(&self, parent: u64, name: &[u8]) -> io::Result<Prepared> {
        let path = self.child(parent, name)?;
        let (ppath, _) = split(&path).ok_or_else(|| err(libc::EINVAL))?;
        let pr = self.layers.resolve(ppath)?;
        if !pr.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let whiteout = match &pr.upper {
            Some(u) => match self.layers.marks.whiteout_at(u, name)? {
                Some(false) => return Err(err(libc::EEXIST)),
                Some(true) => true,
                None => false,
            },
            None => false,
        };
        let lower_exists = match &pr.lower {
            Some(l) => self.layers.lower_lookup(l, name)?.is_some(),
            None => false,
        };
        if lower_exists && !whiteout {
            return Err(err(libc::EEXIST));
        }
        let pdir = self.layers.upper_dir(ppath)?;
        if whiteout {
            sys::unlinkat(&pdir, name, false)?;
        }
        Ok(Prepared {
            path,
            pdir,
            had_whiteout: whiteout,
            lower_exists,
        })
    }

    /// Gives a new node (created with its mode minus the set-ID bits) the caller's ownership
    /// and the requested `mode` as the guest sees them (the parent's group when it is set-gid
    /// in the guest's view): recorded in `user.ax.owner`, never on the host inode
    /// ([`owner`], docs/fsd.md "Host ownership").
    fn own(&self, ctx: Context, pdir: &OwnedFd, fd: &OwnedFd, mode: u32) -> io::Result<()> {
        let pst = Layers::upper_attr(pdir)?;
        let st = sys::fstat(fd)?;
        let mut mode = mode & 0o7777;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            if sys::is_dir(&st) {
                mode |= libc::S_ISGID;
            }
            pst.st_gid
        } else {
            ctx.gid
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(());
        }
        owner::set(
            fd,
            owner::Guest {
                uid: ctx.uid,
                gid,
                mode,
            },
        )
    }

    /// The end of every create-like op: ownership, the journal, and the new node's state
    /// straight into the resolution cache (no walk: we know both layers' answers).
    fn finish_create(
        &self,
        ctx: Context,
        p: &Prepared,
        name: &[u8],
        mode: u32,
    ) -> io::Result<Entry> {
        let fd = sys::openat(&p.pdir, name, libc::O_PATH, 0)?;
        self.own(ctx, &p.pdir, &fd, mode)?;
        let st = Layers::upper_attr(&fd)?;
        let r = self.layers.remember(
            &p.path,
            Layered {
                upper: Some(Arc::new(fd)),
                lower: None,
                lower_exists: p.lower_exists,
                st,
                lower_list: Default::default(),
            },
        );
        self.journal.created(&p.path, kind_of(&st));
        let ino = lock(&self.inodes).ino_for(&p.path);
        let mut attr = st;
        attr.st_ino = ino;
        let t = self.timeout(&r);
        Ok(Entry {
            ino,
            generation: 0,
            attr,
            attr_timeout: t,
            entry_timeout: t,
        })
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> io::Result<()> {
        let _g = lock(&self.meta);
        let path = self.child(parent, name)?;
        let res = self.remove_path(&path, name, dir);
        // The node and its subtree are gone (or half gone after an error): forget them.
        self.layers.invalidate_tree(&path);
        res
    }

    fn remove_path(&self, path: &[u8], name: &[u8], dir: bool) -> io::Result<()> {
        let path = path.to_vec();
        let r = self.layers.resolve(&path)?;
        match (dir, r.is_dir()) {
            (true, false) => return Err(err(libc::ENOTDIR)),
            (false, true) => return Err(err(libc::EISDIR)),
            _ => {}
        }
        if dir && !self.layers.list_merged(&r)?.is_empty() {
            return Err(err(libc::ENOTEMPTY));
        }
        let (ppath, _) = split(&path).ok_or_else(|| err(libc::EBUSY))?;
        let pdir = self.layers.upper_dir(ppath)?;
        if let Some(u) = &r.upper {
            if dir {
                self.layers.marks.clear_whiteouts(u)?;
            } else {
                self.layers.quota.release_node(&sys::fstat(u)?);
            }
            sys::unlinkat(&pdir, name, dir)?;
        }
        if r.lower_exists {
            self.layers.marks.whiteout(&pdir, name)?;
        }
        lock(&self.inodes).remove_tree(&path);
        self.journal.deleted(&path, kind_of(&r.st));
        Ok(())
    }

    fn stat_path(&self, ino: u64) -> io::Result<Stat> {
        self.stat_timeout(ino).map(|(st, _)| st)
    }

    fn stat_timeout(&self, ino: u64) -> io::Result<(Stat, Duration)> {
        let path = self.path(ino)?;
        let r = self.layers.resolve(&path)?;
        let mut st = self.layers.attr(&r)?;
        st.st_ino = ino;
        Ok((st, self.timeout(&r)))
    }
    fn rename_paths(
        &self,
        opath: &[u8],
        oldname: &[u8],
        npath: &[u8],
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let (opath, npath) = (opath.to_vec(), npath.to_vec());
        if npath.starts_with(&opath) && npath.get(opath.len()) == Some(&b'/') {
            return Err(err(libc::EINVAL));
        }
        let src = self.layers.resolve(&opath)?;
        let dst = match self.layers.resolve(&npath) {
            Ok(d) => Some(d),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                (true, true) if !self.layers.list_merged(d)?.is_empty() => {
                    return Err(err(libc::ENOTEMPTY))
                }
                _ => {}
            }
        }
        // Make the source complete in the upper layer (a directory with its whole merged
        // subtree: the simple alternative to overlayfs's redirect_dir).
        if src.is_dir() {
            self.layers.copy_up_tree(&opath)?;
        } else {
            self.layers.copy_up(&opath)?;
        }
        let (op, _) = split(&opath).ok_or_else(|| err(libc::EBUSY))?;
        let (np, _) = split(&npath).ok_or_else(|| err(libc::EBUSY))?;
        let oup = self.layers.upper_dir(op)?;
        let nup = self.layers.upper_dir(np)?;
        // Make room at the destination in the upper layer: a whiteout or an (empty in the
        // merged view) upper directory holding only whiteouts.
        match (
            self.layers.marks.whiteout_at(&nup, newname)?,
            sys::statat(&nup, newname),
        ) {
            (Some(true), _) => sys::unlinkat(&nup, newname, false)?,
            (Some(false), Ok(st)) if sys::is_dir(&st) && src.is_dir() => {
                let d = sys::openat(&nup, newname, libc::O_PATH, 0)?;
                self.layers.marks.clear_whiteouts(&d)?;
            }
            _ => {}
        }
        if let Some(u) = dst.as_ref().and_then(|d| d.upper.as_ref()) {
            self.layers.quota.release_node(&sys::fstat(u)?);
        }
        sys::renameat2(&oup, oldname, &nup, newname, 0)?;
        if src.is_dir() {
            // The moved directory is complete: nothing below the new name may merge in.
            let d = sys::openat(&nup, newname, libc::O_PATH, 0)?;
            self.layers.marks.set_opaque(&d)?;
        }
        if src.lower_exists {
            self.layers.marks.whiteout(&oup, oldname)?;
        }
        {
            let mut ino = lock(&self.inodes);
            ino.remove_tree(&npath);
            ino.rename_tree(&opath, &npath);
        }
        let kind = kind_of(&src.st);
        self.journal.deleted(&opath, kind);
        if dst.is_some() {
            self.journal.modified(&npath, kind);
        } else {
            self.journal.created(&npath, kind);
        }
        Ok(())
    }
}

impl FileSystem for UnionFs {
    fn init(&self, _capable: u32) -> io::Result<u32> {
        Ok(0)
    }

    fn destroy(&self) {
        lock(&self.files).clear();
        lock(&self.dirs).clear();
    }

    fn lookup(&self, _ctx: Context, parent: u64, name: &[u8]) -> io::Result<Entry> {
        let path = self.child(parent, name)?;
        self.lookup_path(&path)
    }

    fn getattr(&self, _ctx: Context, ino: u64, fh: Option<u64>) -> io::Result<(Stat, Duration)> {
        match self.stat_timeout(ino) {
            Ok(v) => Ok(v),
            // An unlinked file still open in the guest: answer from its handle.
            Err(e) => {
                let h = fh.and_then(|fh| self.file(fh).ok()).ok_or(e)?;
                let f = h.file()?;
                let mut st = sys::fstat(f)?;
                owner::apply(f, &mut st);
                st.st_ino = ino;
                Ok((st, self.opts.cache_timeout))
            }
        }
    }

    fn setattr(&self, _ctx: Context, ino: u64, set: SetAttr) -> io::Result<(Stat, Duration)> {
        let path = self.path(ino)?;
        {
            let _g = lock(&self.meta);
            let r = self.layers.resolve(&path)?;
            let symlink = r.st.st_mode & libc::S_IFMT == libc::S_IFLNK;
            let up = self.layers.copy_up(&path)?;
            if set.size.is_some() && r.st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(err(libc::EINVAL));
            }
            if (set.uid.is_some() || set.gid.is_some() || set.mode.is_some()) && !symlink {
                // Owner and set-ID bits live in the guest's view only (docs/fsd.md "Host
                // ownership"); the host inode keeps the host owner.
                let host = sys::fstat(&*up)?;
                let mut g = owner::guest_view(&*up, &host);
                g.uid = set.uid.unwrap_or(g.uid);
                g.gid = set.gid.unwrap_or(g.gid);
                g.mode = set.mode.map_or(g.mode, |m| m & 0o7777);
                owner::set(&*up, g)?;
            }
            if let Some(size) = set.size {
                let f = sys::reopen(&up, libc::O_WRONLY)?;
                self.layers.quota.truncate(&f, size, || {
                    // SAFETY: plain syscall on an owned fd.
                    sys::cvt(unsafe { libc::ftruncate64(f.as_raw_fd(), size as i64) }).map(drop)
                })?;
            }
            if (set.atime.is_some() || set.mtime.is_some()) && !symlink {
                sys::utimes_fd(&up, set.atime.map(timespec), set.mtime.map(timespec))?;
            }
            self.journal.modified(&path, kind_of(&r.st));
        }
        Ok((self.stat_path(ino)?, self.opts.cache_timeout))
    }

    fn readlink(&self, _ctx: Context, ino: u64) -> io::Result<Vec<u8>> {
        let path = self.path(ino)?;
        let r = self.layers.resolve(&path)?;
        if r.st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        self.layers.readlink(&r)
    }

    fn symlink(&self, ctx: Context, target: &[u8], parent: u64, name: &[u8]) -> io::Result<Entry> {
        if target.is_empty() || target.len() >= libc::PATH_MAX as usize {
            return Err(err(libc::EINVAL));
        }
        let _g = lock(&self.meta);
        let p = self.prepare_create(parent, name)?;
        sys::symlinkat(target, &p.pdir, name)?;
        self.finish_create(ctx, &p, name, 0o777)
    }

    fn mknod(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        // Never a device node on the host (the upper layer's own whiteouts are made by
        // `whiteout`, not here): character and block devices are refused. FIFOs, sockets and
        // regular files carry no data the host would act on (docs/fsd.md "Host ownership").
        let _ = rdev;
        let kind = mode & libc::S_IFMT;
        if !matches!(kind, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFREG) {
            return Err(err(libc::EPERM));
        }
        let _g = lock(&self.meta);
        let p = self.prepare_create(parent, name)?;
        sys::mknodat(&p.pdir, name, kind | (mode & 0o1777), 0)?;
        self.finish_create(ctx, &p, name, mode)
    }

    fn mkdir(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        _umask: u32,
    ) -> io::Result<Entry> {
        let _g = lock(&self.meta);
        let p = self.prepare_create(parent, name)?;
        sys::mkdirat(&p.pdir, name, mode & 0o1777)?;
        if p.had_whiteout {
            // overlayfs.rst: a directory created where a lower one was deleted is opaque.
            let fd = sys::openat(&p.pdir, name, libc::O_PATH, 0)?;
            self.layers.marks.set_opaque(&fd)?;
        }
        self.finish_create(ctx, &p, name, mode)
    }

    fn unlink(&self, _ctx: Context, parent: u64, name: &[u8]) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, _ctx: Context, parent: u64, name: &[u8]) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn rename(
        &self,
        _ctx: Context,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        // RENAME_WHITEOUT is not supported (docs/fsd.md); EXCHANGE excludes NOREPLACE.
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
            || (exchange && flags & libc::RENAME_NOREPLACE != 0)
        {
            return Err(err(libc::EINVAL));
        }
        let _g = lock(&self.meta);
        let opath = self.child(olddir, oldname)?;
        let npath = self.child(newdir, newname)?;
        if opath == npath {
            return Ok(());
        }
        let res = if exchange {
            self.exchange_paths(&opath, oldname, &npath, newname)
        } else {
            self.rename_paths(&opath, oldname, &npath, newname, flags)
        };
        // Both subtrees changed (moved, made opaque, whited out), even after an error halfway.
        self.layers.invalidate_tree(&opath);
        self.layers.invalidate_tree(&npath);
        res
    }

    fn link(&self, ctx: Context, ino: u64, newparent: u64, newname: &[u8]) -> io::Result<Entry> {
        let _g = lock(&self.meta);
        let spath = self.path(ino)?;
        let r = self.layers.resolve(&spath)?;
        if r.is_dir() {
            return Err(err(libc::EPERM));
        }
        self.layers.copy_up(&spath)?;
        let (sp, sname) = split(&spath).ok_or_else(|| err(libc::EPERM))?;
        let sdir = self.layers.upper_dir(sp)?;
        let p = self.prepare_create(newparent, newname)?;
        let (path, pdir) = (&p.path, &p.pdir);
        let c_old = sys::cstr(sname)?;
        let c_new = sys::cstr(newname)?;
        // SAFETY: valid fds and C strings; flags 0: never follows a symlink.
        if unsafe {
            libc::linkat(
                sdir.as_raw_fd(),
                c_old.as_ptr(),
                pdir.as_raw_fd(),
                c_new.as_ptr(),
                0,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let _ = ctx;
        self.layers.invalidate(path);
        let r = self.layers.resolve(path)?;
        self.journal.created(path, Kind::File);
        self.entry_for(path, &r)
    }

    fn open(&self, _ctx: Context, ino: u64, flags: u32) -> io::Result<(u64, u32)> {
        let path = self.path(ino)?;
        let f = sanitize_open_flags(flags);
        let writes = f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0;
        let r = self.layers.resolve(&path)?;
        // FUSE never opens device nodes, FIFOs or sockets (the guest kernel handles them);
        // refusing them keeps the host from ever opening a guest-made device node.
        if r.st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(err(if r.is_dir() {
                libc::EISDIR
            } else {
                libc::ENXIO
            }));
        }
        if writes {
            let _g = lock(&self.meta);
            let up = self.layers.copy_up(&path)?;
            let fd = sys::reopen(&up, f)?;
            self.journal.modified(&path, Kind::File);
            return Ok((self.add_file(fd), 0));
        }
        // A file only in an immutable lower layer: the guest may keep its page cache across
        // opens (FOPEN_KEEP_CACHE); its content can only change through this guest.
        let keep = if r.upper.is_none() && self.layers.lower.immutable() {
            fopen::KEEP_CACHE
        } else {
            0
        };
        let h = Handle::from_lower(self.layers.open_read(&r, f)?);
        Ok((self.add_handle(h), keep))
    }

    fn create(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        _umask: u32,
    ) -> io::Result<(Entry, u64, u32)> {
        let g = lock(&self.meta);
        let p = match self.prepare_create(parent, name) {
            Ok(v) => v,
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST) && flags as i32 & libc::O_EXCL == 0 =>
            {
                drop(g);
                let path = self.child(parent, name)?;
                let entry = self.lookup_path(&path)?;
                let (fh, fl) = self.open(ctx, entry.ino, flags)?;
                return Ok((entry, fh, fl));
            }
            Err(e) => return Err(e),
        };
        let f = sanitize_open_flags(flags) | libc::O_CREAT | libc::O_EXCL;
        let fd = sys::openat(&p.pdir, name, f, (mode & 0o1777) | libc::S_IFREG)?;
        let entry = self.finish_create(ctx, &p, name, mode)?;
        Ok((entry, self.add_file(fd), 0))
    }

    fn read(&self, ctx: Context, ino: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let mut sink = VecSink::new(size as usize);
        self.read_into(ctx, ino, fh, offset, size, &mut sink)?;
        Ok(sink.buf)
    }

    fn read_into(
        &self,
        _ctx: Context,
        _ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut dyn ReadSink,
    ) -> io::Result<usize> {
        let h = self.file(fh)?;
        let size = (size as usize).min(out.room());
        match &*h {
            Handle::File(file) => out.read_from(file.as_raw_fd(), offset, size),
            Handle::Mem(m) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(m.len());
                let end = start.saturating_add(size).min(m.len());
                out.put(&m[start..end])
            }
        }
    }

    fn write(
        &self,
        ctx: Context,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: u32,
    ) -> io::Result<usize> {
        self.write_from(ctx, ino, fh, offset, &mut { data }, flags)
    }

    fn write_from(
        &self,
        _ctx: Context,
        _ino: u64,
        fh: u64,
        offset: u64,
        data: &mut dyn WriteSource,
        _flags: u32,
    ) -> io::Result<usize> {
        let h = self.file(fh)?;
        let file = h.file()?;
        let len = data.len() as u64;
        // An O_APPEND handle writes at the end whatever the offset.
        // SAFETY: plain syscall on an owned fd.
        let append = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) } & libc::O_APPEND != 0;
        self.layers.quota.resize_with(
            file,
            |size| {
                if append {
                    size.saturating_add(len)
                } else {
                    offset.saturating_add(len)
                }
            },
            || data.write_to(file.as_raw_fd(), offset),
        )
    }

    fn statfs(&self, _ctx: Context, _ino: u64) -> io::Result<libc::statvfs64> {
        sys::fstatvfs(&self.layers.upper)
    }

    fn release(&self, _ctx: Context, _ino: u64, fh: u64) -> io::Result<()> {
        let h = lock(&self.files).remove(&fh);
        if let Some(Handle::File(f)) = h.as_deref() {
            if let Ok(st) = sys::fstat(f) {
                self.layers.quota.closed(&st);
            }
        }
        Ok(())
    }

    fn flush(&self, _ctx: Context, _ino: u64, _fh: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: Context, _ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        let h = self.file(fh)?;
        let Handle::File(file) = &*h else {
            return Ok(()); // a read-only blob: nothing to sync
        };
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    fn setxattr(
        &self,
        _ctx: Context,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if Layers::is_private_xattr(name) {
            return Err(err(libc::EPERM));
        }
        let path = self.path(ino)?;
        let _g = lock(&self.meta);
        let r = self.layers.resolve(&path)?;
        if r.st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(err(libc::EPERM));
        }
        let up = self.layers.copy_up(&path)?;
        sys::setxattr_fd(&up, name, value, flags as i32)?;
        self.journal.modified(&path, kind_of(&r.st));
        Ok(())
    }

    fn getxattr(&self, _ctx: Context, ino: u64, name: &[u8]) -> io::Result<Vec<u8>> {
        if Layers::is_private_xattr(name) {
            return Err(err(libc::ENODATA));
        }
        let path = self.path(ino)?;
        let r = self.layers.resolve(&path)?;
        if r.st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(err(libc::ENODATA));
        }
        self.layers
            .getxattr(&r, name)?
            .ok_or_else(|| err(libc::ENODATA))
    }

    fn listxattr(&self, _ctx: Context, ino: u64) -> io::Result<Vec<u8>> {
        let path = self.path(ino)?;
        let r = self.layers.resolve(&path)?;
        if r.st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for n in self.layers.listxattr(&r)? {
            if !Layers::is_private_xattr(&n) {
                out.extend_from_slice(&n);
                out.push(0);
            }
        }
        Ok(out)
    }

    fn removexattr(&self, _ctx: Context, ino: u64, name: &[u8]) -> io::Result<()> {
        if Layers::is_private_xattr(name) {
            return Err(err(libc::EPERM));
        }
        let path = self.path(ino)?;
        let _g = lock(&self.meta);
        let r = self.layers.resolve(&path)?;
        if r.st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(err(libc::EPERM));
        }
        let up = self.layers.copy_up(&path)?;
        sys::removexattr_fd(&up, name)?;
        self.journal.modified(&path, kind_of(&r.st));
        Ok(())
    }

    fn opendir(&self, _ctx: Context, ino: u64, _flags: u32) -> io::Result<(u64, u32)> {
        let path = self.path(ino)?;
        let r = self.layers.resolve(&path)?;
        let names = self.layers.list_merged(&r)?;
        let mut entries = Vec::with_capacity(names.len() + 2);
        let parent_ino = match split(&path) {
            Some((p, _)) => lock(&self.inodes).ino_for(p),
            None => ROOT_ID,
        };
        let dt_dir = sys::dtype(libc::S_IFDIR);
        entries.push((ino, dt_dir, b".".to_vec()));
        entries.push((parent_ino, dt_dir, b"..".to_vec()));
        {
            let mut inodes = lock(&self.inodes);
            for (name, t) in names {
                let child = inodes.ino_for(&join(&path, &name));
                entries.push((child, t, name));
            }
        }
        let list = entries
            .into_iter()
            .enumerate()
            .map(|(i, (ino, type_, name))| DirEntry {
                ino,
                offset: i as u64 + 1,
                type_,
                name,
            })
            .collect();
        let fh = self.new_fh();
        lock(&self.dirs).insert(fh, Arc::new(list));
        Ok((fh, 0))
    }

    fn readdir(&self, _ctx: Context, _ino: u64, fh: u64, offset: u64) -> io::Result<Vec<DirEntry>> {
        let list = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        // Hand out about what one reply can hold (the server stops packing when it is full,
        // and the guest asks again from the last offset): up to 128 KiB of plain dirents.
        let mut bytes = 0;
        Ok(list
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|d| {
                bytes += crate::fuse::abi::dirent_size(d.name.len());
                bytes <= 128 << 10
            })
            .cloned()
            .collect())
    }

    fn releasedir(&self, _ctx: Context, _ino: u64, fh: u64) -> io::Result<()> {
        lock(&self.dirs).remove(&fh);
        Ok(())
    }

    fn fsyncdir(&self, _ctx: Context, _ino: u64, _fh: u64, _datasync: bool) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, _ctx: Context, ino: u64, _mask: u32) -> io::Result<()> {
        // The guest kernel checks permissions itself (virtio-fs mounts use default_permissions);
        // here we only say whether the node exists.
        self.stat_path(ino).map(drop)
    }

    fn lseek(
        &self,
        _ctx: Context,
        _ino: u64,
        fh: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.file(fh)?;
        let whence = whence as i32;
        if ![
            libc::SEEK_SET,
            libc::SEEK_CUR,
            libc::SEEK_END,
            libc::SEEK_DATA,
            libc::SEEK_HOLE,
        ]
        .contains(&whence)
        {
            return Err(err(libc::EINVAL));
        }
        match &*h {
            Handle::File(file) => sys::lseek(file, offset, whence)?.ok_or_else(|| err(libc::ENXIO)),
            Handle::Mem(m) => {
                // The guest kernel tracks the position for SEEK_SET/CUR/END itself; this is
                // what lseek(2) would answer for a file without holes.
                let len = m.len() as u64;
                match whence {
                    libc::SEEK_DATA if offset < len => Ok(offset),
                    libc::SEEK_HOLE if offset < len => Ok(len),
                    libc::SEEK_DATA | libc::SEEK_HOLE => Err(err(libc::ENXIO)),
                    libc::SEEK_END => Ok(len.saturating_add(offset)),
                    _ => Ok(offset),
                }
            }
        }
    }

    fn fallocate(
        &self,
        _ctx: Context,
        _ino: u64,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let h = self.file(fh)?;
        let file = h.file()?;
        let mode = mode as i32;
        let end = offset.saturating_add(length);
        if offset > i64::MAX as u64 || end > i64::MAX as u64 {
            return Err(err(libc::EFBIG));
        }
        // Under the quota: plain allocation and zeroing may grow the file to `end`; punching
        // a hole never grows it. KEEP_SIZE past the end (blocks the size does not show) and
        // the range-shifting modes are refused (docs/fsd.md "Quota").
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let new_size = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 | libc::FALLOC_FL_ZERO_RANGE => {
                if keep && end > sys::fstat(file)?.st_size as u64 {
                    return Err(err(libc::EOPNOTSUPP));
                }
                end
            }
            libc::FALLOC_FL_PUNCH_HOLE if keep => 0,
            _ => return Err(err(libc::EOPNOTSUPP)),
        };
        self.layers.quota.resize(file, new_size, || {
            // SAFETY: plain syscall on an owned fd.
            sys::cvt(unsafe {
                libc::fallocate64(file.as_raw_fd(), mode, offset as i64, length as i64)
            })
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests;
