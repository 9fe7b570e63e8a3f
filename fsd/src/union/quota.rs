//! The upper layer's disk quota (`--quota BYTES`, docs/fsd.md "Quota").
//!
//! Usage is the **apparent size** (`st_size`) of the regular files in the upper layer, each
//! inode counted once, so a sparse file counts in full: `truncate -s 15T big` is refused even
//! though it would take no blocks (the branch builder would read it as 15 TB of zeros). Every
//! operation that can grow a file goes through [`Quota::resize`]: WRITE, SETATTR size,
//! FALLOCATE, copy-up. An operation that would take usage past the limit fails with ENOSPC and
//! changes nothing. Space comes back when the last name of a file goes and no handle has it
//! open ([`Quota::release_node`], [`Quota::closed`]).
//!
//! Size-changing operations hold the write lock; a write inside the current size only the read
//! lock (a truncate cannot run between its check and the write, so it cannot grow the file).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, RwLock};

use super::sys::{self, err};

/// Per-agent upper-layer quota.
pub struct Quota {
    /// Limit in bytes; `u64::MAX` = unlimited.
    limit: u64,
    /// Bytes counted (apparent sizes), guarded by the lock ordering described above.
    used: RwLock<u64>,
    /// Open handles per host inode `(st_dev, st_ino)`: an unlinked file's space is given back
    /// only when its last handle closes.
    open: Mutex<HashMap<(u64, u64), usize>>,
    /// Unlinked inodes still open: their size is given back on the last close.
    doomed: Mutex<HashMap<(u64, u64), ()>>,
}

fn key(st: &libc::stat64) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl Quota {
    /// A quota of `limit` bytes (`None`: unlimited) over the upper layer `upper`, whose current
    /// usage is counted now (one walk).
    pub fn new(limit: Option<u64>, upper: &OwnedFd) -> io::Result<Self> {
        let used = match limit {
            Some(_) => usage(upper)?,
            None => 0,
        };
        Ok(Self {
            limit: limit.unwrap_or(u64::MAX),
            used: RwLock::new(used),
            open: Mutex::new(HashMap::new()),
            doomed: Mutex::new(HashMap::new()),
        })
    }

    /// Unlimited (tests).
    pub fn unlimited() -> Self {
        Self {
            limit: u64::MAX,
            used: RwLock::new(0),
            open: Mutex::new(HashMap::new()),
            doomed: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.limit != u64::MAX
    }

    /// Bytes counted now.
    pub fn used(&self) -> u64 {
        *self.used.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op`, which makes the regular file `fd` at most `new_size` bytes long (a write's
    /// end offset, a truncate's size, a copy-up's size), under the quota: ENOSPC before `op`
    /// when growing to `new_size` would pass the limit; the actual change in size is counted
    /// after it.
    pub fn resize<T>(
        &self,
        fd: &impl AsRawFd,
        new_size: u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.resize_with(fd, |_| new_size, op)
    }

    /// [`Self::resize`] with the new size computed from the current one (an `O_APPEND` write
    /// ends at the current size plus its length).
    pub fn resize_with<T>(
        &self,
        fd: &impl AsRawFd,
        new_size: impl Fn(u64) -> u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.change(fd, new_size, op, true)
    }

    /// Runs `op`, a truncate of `fd` to `size` (which may shrink it), under the quota.
    pub fn truncate<T>(
        &self,
        fd: &impl AsRawFd,
        size: u64,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.change(fd, |_| size, op, false)
    }

    /// `grow_only`: `op` never shrinks the file, so one inside the current size runs under
    /// the read lock.
    fn change<T>(
        &self,
        fd: &impl AsRawFd,
        new_size: impl Fn(u64) -> u64,
        op: impl FnOnce() -> io::Result<T>,
        grow_only: bool,
    ) -> io::Result<T> {
        if !self.enabled() {
            return op();
        }
        if grow_only {
            let _r = self.used.read().unwrap_or_else(|p| p.into_inner());
            let size = sys::fstat(fd)?.st_size as u64;
            if new_size(size) <= size {
                return op();
            }
        }
        let mut used = self.used.write().unwrap_or_else(|p| p.into_inner());
        let before = sys::fstat(fd)?.st_size as u64;
        let new_size = new_size(before);
        if new_size > before && used.saturating_add(new_size - before) > self.limit {
            return Err(err(libc::ENOSPC));
        }
        let res = op();
        let after = sys::fstat(fd).map_or(before, |s| s.st_size as u64);
        *used = used.saturating_add(after).saturating_sub(before);
        res
    }

    /// A handle on this file was opened.
    pub fn opened(&self, fd: &impl AsRawFd) {
        if self.enabled() {
            if let Ok(st) = sys::fstat(fd) {
                *lock(&self.open).entry(key(&st)).or_insert(0) += 1;
            }
        }
    }

    /// A handle on this inode (its attributes now) was closed: an unlinked file's last
    /// handle gives its space back.
    pub fn closed(&self, st: &libc::stat64) {
        if !self.enabled() {
            return;
        }
        let k = key(st);
        let last = {
            let mut open = lock(&self.open);
            match open.get_mut(&k) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    open.remove(&k);
                    true
                }
                None => false,
            }
        };
        if last && st.st_nlink == 0 && lock(&self.doomed).remove(&k).is_some() {
            self.give_back(st.st_size as u64);
        }
    }

    /// The name of this node (attributes taken just before) is about to go (unlink, or
    /// replaced by a rename): its space comes back now, or on its last close when open.
    pub fn release_node(&self, st: &libc::stat64) {
        if !self.enabled() || st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return;
        }
        if lock(&self.open).contains_key(&key(st)) {
            lock(&self.doomed).insert(key(st), ());
        } else {
            self.give_back(st.st_size as u64);
        }
    }

    fn give_back(&self, n: u64) {
        let mut used = self.used.write().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Apparent size of the regular files below `dir`, each inode once (iterative walk, never
/// following symlinks).
pub fn usage(dir: &OwnedFd) -> io::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![sys::openat(
        dir,
        b".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?];
    while let Some(d) = stack.pop() {
        for (name, _) in sys::list_dir(&d)? {
            let st = sys::statat(&d, &name)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG if st.st_nlink <= 1 || seen.insert(key(&st)) => {
                    total = total.saturating_add(st.st_size as u64);
                }
                libc::S_IFDIR => {
                    stack.push(sys::openat(
                        &d,
                        &name,
                        libc::O_RDONLY | libc::O_DIRECTORY,
                        0,
                    )?);
                }
                _ => {}
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_apparent_size_and_refuses_growth_past_the_limit() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), vec![1u8; 1000]).unwrap();
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(5000).unwrap();
        std::fs::hard_link(d.path().join("sub/a"), d.path().join("a2")).unwrap();
        let root = sys::open_root(d.path()).unwrap();
        assert_eq!(
            usage(&root).unwrap(),
            6000,
            "hard link counted once, holes counted"
        );
        let q = Quota::new(Some(10_000), &root).unwrap();
        let fd = sys::openat(&root, b"sparse", libc::O_RDWR, 0).unwrap();
        let grow = |n: u64| {
            q.truncate(&fd, n, || {
                // SAFETY: plain syscall.
                sys::cvt(unsafe { libc::ftruncate64(fd.as_raw_fd(), n as i64) }).map(drop)
            })
        };
        grow(9000).unwrap();
        assert_eq!(q.used(), 10_000);
        let e = grow(9001).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(sys::fstat(&fd).unwrap().st_size, 9000, "nothing changed");
        grow(100).unwrap();
        assert_eq!(q.used(), 1100);
        // 15 TB sparse: refused.
        let e = grow(15 << 40).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Unlink while open: space back on the last close.
        let st = sys::fstat(&fd).unwrap();
        q.opened(&fd);
        q.release_node(&st);
        assert_eq!(q.used(), 1100);
        sys::unlinkat(&root, b"sparse", false).unwrap();
        q.closed(&sys::fstat(&fd).unwrap());
        assert_eq!(q.used(), 1000);
    }
}
