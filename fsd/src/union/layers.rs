//! Layer resolution, copy-up, whiteouts and merged listings: the overlayfs semantics
//! (Documentation/filesystems/overlayfs.rst) implemented in user space over two directory fds.
//!
//! Paths here are *share-relative byte strings* ([`super::path`]) built only from names the
//! guest sent through LOOKUP/CREATE/... after [`super::path::validate_name`]: no `/`, no
//! `.`/`..`, no NUL. Every component is opened with `openat(parent_fd, name, O_PATH |
//! O_NOFOLLOW)` from a layer root, so a symlink anywhere in a path is never traversed on the
//! host: as a last component it is opened as the link itself, as an intermediate component the
//! next `openat` fails with ENOTDIR.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use super::cache::ResolveCache;
use super::freeze::Frozen;
use super::lower::{Lower, LowerFile, LowerNode};
use super::owner::{self, Guest};
use super::path::{components, join, split};
use super::quota::Quota;
use super::sys::{self, err};
use super::whiteout::Marks;
use crate::overlay;

/// `true` when the caller's errno says "no such entry".
fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// A directory listing: names with their `DT_*` types.
pub type Listing = Vec<(Vec<u8>, u32)>;

/// A path as seen through the union.
pub struct Layered {
    /// The node in the upper layer (an `O_PATH` fd), if it is there.
    pub upper: Option<Arc<OwnedFd>>,
    /// The node in the lower layer, if it is visible: no upper node hides it (an upper non-dir,
    /// a whiteout, an opaque upper dir, or an opaque ancestor).
    pub lower: Option<LowerNode>,
    /// The lower layer has an entry at this path under a visible lower parent, even if the upper
    /// layer hides it: removing or renaming the path then needs a whiteout.
    pub lower_exists: bool,
    /// Attributes of the top-most node when resolved: the file type is always right, the rest
    /// only for a lower-only node (use [`Layers::attr`] for current attributes).
    pub st: libc::stat64,
    /// The visible lower directory's names with their `DT_*` types, read once: the lower
    /// layer never changes.
    pub lower_list: OnceLock<Arc<Listing>>,
}

impl Layered {
    /// Is the node a directory?
    pub fn is_dir(&self) -> bool {
        sys::is_dir(&self.st)
    }
}

/// The two layers: the lower layer, the upper root fd and the xattr that marks opaque
/// directories.
pub struct Layers {
    /// The read-only lower layer (a directory or a git tree).
    pub lower: Lower,
    /// Root of the upper layer.
    pub upper: OwnedFd,
    /// The overlay xattrs (`trusted.*` as root, else `user.*`) and the whiteout form.
    pub marks: Marks,
    /// The upper layer's disk quota (apparent sizes).
    pub quota: Quota,
    /// With a frozen directory lower: only nodes present at freeze time are visible.
    pub frozen: Option<Frozen>,
    /// Resolved nodes by path (the resolution cache, `union::cache`).
    pub cache: ResolveCache<Layered>,
}

/// Opens `name` in `dir` as `O_PATH | O_NOFOLLOW`; `Ok(None)` when absent.
fn open_opt(dir: &impl AsRawFd, name: &[u8]) -> io::Result<Option<OwnedFd>> {
    match sys::openat(dir, name, libc::O_PATH, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Layers {
    /// Is `name` one of the xattrs the union itself uses (hidden from the guest)?
    pub fn is_private_xattr(name: &[u8]) -> bool {
        overlay::is_overlay_xattr(name) || name.starts_with(b"user.ax.")
    }

    /// The lower layer's entry `name` in `dir`, unless a freeze hides it.
    pub fn lower_lookup(
        &self,
        dir: &LowerNode,
        name: &[u8],
    ) -> io::Result<Option<(LowerNode, libc::stat64)>> {
        Ok(self
            .lower
            .lookup(dir, name)?
            .filter(|(_, st)| self.frozen.as_ref().is_none_or(|f| f.admits(st))))
    }

    /// Resolves a share-relative path through both layers (ENOENT when absent or whited out,
    /// ENOTDIR when a non-directory is used as a directory). Served from the resolution cache
    /// (`union::cache`) when possible; otherwise walks down from the nearest cached ancestor
    /// (iteratively: guest-made paths may be very deep) and caches every node on the way.
    pub fn resolve(&self, path: &[u8]) -> io::Result<Arc<Layered>> {
        let gen = match self.cache.get(path) {
            Ok(v) => return Ok(v),
            Err(g) => g,
        };
        // Find the deepest cached ancestor.
        let mut cut = path.len();
        let mut base = None;
        while cut > 0 {
            cut = path[..cut].iter().rposition(|&b| b == b'/').unwrap_or(0);
            if let Ok(v) = self.cache.get(&path[..cut]) {
                base = Some(v);
                break;
            }
        }
        let mut cur = match base {
            Some(v) => v,
            None => {
                let r = Arc::new(self.resolve_root()?);
                self.cache.insert(b"", r.clone(), gen);
                r
            }
        };
        let mut end = cut;
        for comp in components(&path[cut..]) {
            end = if end == 0 {
                comp.len()
            } else {
                end + 1 + comp.len()
            };
            cur = Arc::new(self.step(&cur, comp)?);
            self.cache.insert(&path[..end], cur.clone(), gen);
        }
        Ok(cur)
    }

    /// The root in both layers.
    fn resolve_root(&self) -> io::Result<Layered> {
        let upper = sys::openat(&self.upper, b".", libc::O_PATH, 0)?;
        let st = sys::fstat(&upper)?;
        let lower = if self.marks.is_opaque(&upper) {
            None
        } else {
            Some(self.lower.root()?.0)
        };
        Ok(Layered {
            upper: Some(Arc::new(upper)),
            lower,
            lower_exists: false,
            st,
            lower_list: OnceLock::new(),
        })
    }

    /// One component down from `parent` (overlayfs.rst "directories", "whiteouts and opaque
    /// directories").
    fn step(&self, parent: &Layered, name: &[u8]) -> io::Result<Layered> {
        if !parent.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let u = match &parent.upper {
            Some(d) => open_opt(d, name)?,
            None => None,
        };
        let ust = match &u {
            Some(fd) => Some(sys::fstat(fd)?),
            None => None,
        };
        let (l, lst) = match &parent.lower {
            Some(d) => match self.lower_lookup(d, name)? {
                Some((n, s)) => (Some(n), Some(s)),
                None => (None, None),
            },
            None => (None, None),
        };
        let lower_exists = l.is_some();
        // Which lower node stays visible under this upper node?
        let l_visible = match (&u, &ust) {
            (Some(ufd), Some(s)) => {
                if self.marks.is_whiteout(ufd, s) {
                    return Err(err(libc::ENOENT));
                }
                sys::is_dir(s)
                    && lst.as_ref().is_some_and(sys::is_dir)
                    && !self.marks.is_opaque(ufd)
            }
            _ => l.is_some(),
        };
        let l = if l_visible { l } else { None };
        let st = match (ust, &l) {
            (Some(s), _) => s,
            (None, Some(_)) => lst.unwrap_or_else(|| unreachable!()),
            (None, None) => return Err(err(libc::ENOENT)),
        };
        Ok(Layered {
            upper: u.map(Arc::new),
            lower: l,
            lower_exists,
            st,
            lower_list: OnceLock::new(),
        })
    }

    /// Current attributes of a resolved node: `fstat` of the upper copy (writes change it), or
    /// the lower attributes (the lower layer never changes).
    pub fn attr(&self, r: &Layered) -> io::Result<libc::stat64> {
        match &r.upper {
            Some(u) => Self::upper_attr(u),
            None => Ok(r.st),
        }
    }

    /// Attributes of an upper node as the guest sees them: the host's with the stored
    /// guest owner and mode ([`owner`]).
    pub fn upper_attr(fd: &OwnedFd) -> io::Result<libc::stat64> {
        let mut st = sys::fstat(fd)?;
        owner::apply(fd, &mut st);
        Ok(st)
    }

    /// Caches `state` as the state of `path`, made by the caller after its last change to the
    /// layers (it holds the union's metadata lock); returns it.
    pub fn remember(&self, path: &[u8], state: Layered) -> Arc<Layered> {
        let r = Arc::new(state);
        self.cache.invalidate(path);
        if let Err(gen) = self.cache.get(path) {
            self.cache.insert(path, r.clone(), gen);
        }
        r
    }

    /// Forgets the cached state of `path` (after changing that node only).
    pub fn invalidate(&self, path: &[u8]) {
        self.cache.invalidate(path);
    }

    /// Forgets the cached state of `path` and everything below it.
    pub fn invalidate_tree(&self, path: &[u8]) {
        self.cache.invalidate_tree(path);
    }

    /// The names in a merged directory with their `DT_*` types: upper entries shadow lower ones,
    /// whiteouts hide them, an opaque upper dir (already reflected in `dir.lower`) stops the
    /// merge. Upper entries come first.
    pub fn list_merged(&self, dir: &Layered) -> io::Result<Vec<(Vec<u8>, u32)>> {
        if !dir.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        if let Some(u) = &dir.upper {
            let xwhiteouts = self.marks.has_xwhiteouts(u);
            for (name, dt) in sys::list_dir(u)? {
                let t = self.marks.entry_is_whiteout(u, &name, dt, xwhiteouts)?;
                seen.insert(name.clone());
                if let Some(t) = t {
                    out.push((name, t));
                }
            }
        }
        if let Some(l) = &dir.lower {
            let list = match dir.lower_list.get() {
                Some(v) => v.clone(),
                None => {
                    let mut v = self.lower.list(l)?;
                    if let (Some(f), LowerNode::Fd(d)) = (&self.frozen, l) {
                        v.retain(|(name, _)| sys::statat(d, name).is_ok_and(|st| f.admits(&st)));
                    }
                    let v = Arc::new(v);
                    let _ = dir.lower_list.set(v.clone());
                    v
                }
            };
            for (name, t) in list.iter() {
                if seen.contains(name) {
                    continue;
                }
                out.push((name.clone(), *t));
            }
        }
        Ok(out)
    }

    /// The upper directory for `path`, copying up the directory chain from the lower layer as
    /// needed (overlayfs.rst "copy up": parents first). Returns an `O_PATH` fd.
    pub fn upper_dir(&self, path: &[u8]) -> io::Result<Arc<OwnedFd>> {
        let r = self.resolve(path)?;
        if !r.is_dir() {
            return Err(err(libc::ENOTDIR));
        }
        if let Some(u) = &r.upper {
            return Ok(u.clone());
        }
        let (parent, name) = split(path).ok_or_else(|| err(libc::EIO))?;
        let pdir = self.upper_dir(parent)?;
        let lower = r.lower.as_ref().ok_or_else(|| err(libc::EIO))?;
        sys::mkdirat(&pdir, name, r.st.st_mode & 0o7777 & !owner::HOST_STRIP)?;
        let fd = sys::openat(&pdir, name, libc::O_PATH, 0);
        // The node changed (it has an upper copy now), even if copying the metadata fails;
        // its children did not (the new upper directory is empty and not opaque).
        self.invalidate(path);
        let fd = fd?;
        self.copy_meta(lower, &fd, &r.st, false)?;
        Ok(Arc::new(fd))
    }

    /// Copies a non-directory up (full copy; holes preserved) and returns its upper `O_PATH`
    /// fd. A node already in the upper layer is returned as is. Directories: see
    /// [`Self::upper_dir`] / [`Self::copy_up_tree`].
    pub fn copy_up(&self, path: &[u8]) -> io::Result<Arc<OwnedFd>> {
        let r = self.resolve(path)?;
        if let Some(u) = &r.upper {
            return Ok(u.clone());
        }
        if r.is_dir() {
            return self.upper_dir(path);
        }
        let (parent, name) = split(path).ok_or_else(|| err(libc::EIO))?;
        let pdir = self.upper_dir(parent)?;
        let lower = r.lower.as_ref().ok_or_else(|| err(libc::EIO))?;
        let res = self.copy_node(lower, &r.st, &pdir, name);
        self.invalidate(path);
        res?;
        Ok(Arc::new(sys::openat(&pdir, name, libc::O_PATH, 0)?))
    }

    /// Copies a whole merged subtree into the upper layer (used before a directory rename: the
    /// moved directory is then complete in the upper layer and can be marked opaque).
    pub fn copy_up_tree(&self, path: &[u8]) -> io::Result<()> {
        let r = self.resolve(path)?;
        if !r.is_dir() {
            self.copy_up(path)?;
            return Ok(());
        }
        self.upper_dir(path)?;
        if r.lower.is_none() {
            return Ok(());
        }
        for (name, _) in self.list_merged(&r)? {
            self.copy_up_tree(&join(path, &name))?;
        }
        Ok(())
    }

    fn copy_node(
        &self,
        src: &LowerNode,
        st: &libc::stat64,
        pdir: &OwnedFd,
        name: &[u8],
    ) -> io::Result<()> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => self.copy_file(src, st, pdir, name),
            libc::S_IFLNK => {
                let target = self.lower.readlink(src)?;
                sys::symlinkat(&target, pdir, name)?;
                let fd = sys::openat(pdir, name, libc::O_PATH, 0)?;
                self.copy_meta(src, &fd, st, true)
            }
            // Never a device node on the host (docs/fsd.md "Host ownership").
            libc::S_IFIFO | libc::S_IFSOCK => {
                sys::mknodat(pdir, name, st.st_mode & !0o7000, 0)?;
                let fd = sys::openat(pdir, name, libc::O_PATH, 0)?;
                self.copy_meta(src, &fd, st, false)
            }
            _ => Err(err(libc::EPERM)),
        }
    }

    fn copy_file(
        &self,
        src: &LowerNode,
        st: &libc::stat64,
        pdir: &OwnedFd,
        name: &[u8],
    ) -> io::Result<()> {
        // Build the copy as an unnamed O_TMPFILE and link it in when complete, so a crash never
        // leaves a half-copied file under the real name.
        let (out, tmp) = match sys::openat(pdir, b".", libc::O_TMPFILE | libc::O_RDWR, 0o600) {
            Ok(fd) => (fd, true),
            Err(_) => (
                sys::openat(
                    pdir,
                    name,
                    libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                    0o600,
                )?,
                false,
            ),
        };
        let res = self
            .quota
            .resize(&out, st.st_size as u64, || {
                self.lower.copy_data(src, st, &out)
            })
            .and_then(|()| self.copy_meta(src, &out, st, false))
            .and_then(|()| {
                if tmp {
                    sys::link_fd(&out, pdir, name)
                } else {
                    Ok(())
                }
            });
        if res.is_err() && !tmp {
            let _ = sys::unlinkat(pdir, name, false);
        }
        res
    }

    /// Owner, mode, xattrs (minus the union's own), then times (last, as writing changes them).
    fn copy_meta(
        &self,
        src: &LowerNode,
        dst: &OwnedFd,
        st: &libc::stat64,
        symlink: bool,
    ) -> io::Result<()> {
        if !symlink {
            // The host node stays the host user's, without set-ID bits; the lower owner and
            // mode are what the guest sees (docs/fsd.md "Host ownership").
            owner::set(dst, Guest::of_host(st))?;
            for n in self.lower.listxattr(src).unwrap_or_default() {
                if Self::is_private_xattr(&n) {
                    continue;
                }
                if let Ok(Some(v)) = self.lower.getxattr(src, &n) {
                    if let Err(e) = sys::setxattr_fd(dst, &n, &v, 0) {
                        log::debug!(
                            "copy-up: xattr {} not copied: {e}",
                            String::from_utf8_lossy(&n)
                        );
                    }
                }
            }
            let ts = |s: i64, ns: i64| libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            };
            sys::utimes_fd(
                dst,
                Some(ts(st.st_atime, st.st_atime_nsec)),
                Some(ts(st.st_mtime, st.st_mtime_nsec)),
            )?;
        }
        Ok(())
    }

    /// The target of a symlink seen through the union.
    pub fn readlink(&self, r: &Layered) -> io::Result<Vec<u8>> {
        match (&r.upper, &r.lower) {
            (Some(u), _) => sys::readlink_fd(u),
            (None, Some(l)) => self.lower.readlink(l),
            (None, None) => Err(err(libc::ENOENT)),
        }
    }

    /// One xattr of the top-most node (`Ok(None)` when absent).
    pub fn getxattr(&self, r: &Layered, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match (&r.upper, &r.lower) {
            (Some(u), _) => sys::getxattr_fd(u, name),
            (None, Some(l)) => self.lower.getxattr(l, name),
            (None, None) => Err(err(libc::ENOENT)),
        }
    }

    /// The xattr names of the top-most node.
    pub fn listxattr(&self, r: &Layered) -> io::Result<Vec<Vec<u8>>> {
        match (&r.upper, &r.lower) {
            (Some(u), _) => sys::listxattr_fd(u),
            (None, Some(l)) => self.lower.listxattr(l),
            (None, None) => Err(err(libc::ENOENT)),
        }
    }

    /// Opens the top-most node for reading (`flags` already sanitised, no write access).
    pub fn open_read(&self, r: &Layered, flags: i32) -> io::Result<LowerFile> {
        match (&r.upper, &r.lower) {
            (Some(u), _) => Ok(LowerFile::Fd(sys::reopen(u, flags)?)),
            (None, Some(l)) => self.lower.open_read(l, flags, &self.upper),
            (None, None) => Err(err(libc::ENOENT)),
        }
    }
}
