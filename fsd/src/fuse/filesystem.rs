//! The [`FileSystem`] trait the FUSE [`Server`](super::server::Server) dispatches to: one method
//! per FUSE opcode (include/uapi/linux/fuse.h), already decoded and validated. Methods that a
//! file system does not implement answer `ENOSYS`, which the guest kernel remembers for some
//! ops (e.g. it stops sending FLUSH or FSYNC).

use std::io;
use std::time::Duration;

use super::io::{ReadSink, WriteSource};

/// Who sent the request (`fuse_in_header.uid/gid/pid`, already mapped by the guest kernel).
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// Caller's fs uid in the guest.
    pub uid: u32,
    /// Caller's fs gid in the guest.
    pub gid: u32,
    /// Caller's pid in the guest (0 for kernel-internal requests).
    pub pid: u32,
}

/// Attributes as the FUSE protocol reports them (`struct fuse_attr`), with `ino` already the
/// node id the guest knows.
pub type Stat = libc::stat64;

/// A name → node answer (`struct fuse_entry_out`).
#[derive(Clone, Copy)]
pub struct Entry {
    /// Node id (0 = negative entry).
    pub ino: u64,
    /// Generation of the node id (ids are never reused here, so 0).
    pub generation: u64,
    /// Attributes.
    pub attr: Stat,
    /// How long the guest may cache the attributes.
    pub attr_timeout: Duration,
    /// How long the guest may cache the name.
    pub entry_timeout: Duration,
}

/// One directory entry (`struct fuse_dirent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Node id the name refers to.
    pub ino: u64,
    /// Offset of the *next* entry (what the guest sends back to continue).
    pub offset: u64,
    /// `DT_*` type.
    pub type_: u32,
    /// The name, no NUL.
    pub name: Vec<u8>,
}

/// Attribute changes of SETATTR (`struct fuse_setattr_in`), decoded.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New atime.
    pub atime: Option<TimeSpec>,
    /// New mtime.
    pub mtime: Option<TimeSpec>,
    /// The handle the guest had open, if any (`FATTR_FH`).
    pub fh: Option<u64>,
}

/// A time to set: "now" or a given `(sec, nsec)`.
#[derive(Clone, Copy, Debug)]
pub enum TimeSpec {
    /// `FATTR_ATIME_NOW` / `FATTR_MTIME_NOW`.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, u32),
}

fn nosys<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// A file system served over FUSE. Node ids are the server's `nodeid`s; `ROOT_ID` (1) is the
/// root. Every method may be called concurrently from several request queues.
#[allow(unused_variables, missing_docs)]
pub trait FileSystem: Send + Sync {
    /// FUSE_INIT: the driver's flags in, the flags we want out (masked by the server to what the
    /// driver offered).
    fn init(&self, capable: u32) -> io::Result<u32> {
        Ok(0)
    }
    /// FUSE_DESTROY.
    fn destroy(&self) {}
    fn lookup(&self, ctx: Context, parent: u64, name: &[u8]) -> io::Result<Entry> {
        nosys()
    }
    /// FUSE_FORGET / BATCH_FORGET: the guest dropped `nlookup` references.
    fn forget(&self, ino: u64, nlookup: u64) {}
    fn getattr(&self, ctx: Context, ino: u64, fh: Option<u64>) -> io::Result<(Stat, Duration)> {
        nosys()
    }
    fn setattr(&self, ctx: Context, ino: u64, set: SetAttr) -> io::Result<(Stat, Duration)> {
        nosys()
    }
    fn readlink(&self, ctx: Context, ino: u64) -> io::Result<Vec<u8>> {
        nosys()
    }
    fn symlink(&self, ctx: Context, target: &[u8], parent: u64, name: &[u8]) -> io::Result<Entry> {
        nosys()
    }
    fn mknod(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        nosys()
    }
    fn mkdir(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        nosys()
    }
    fn unlink(&self, ctx: Context, parent: u64, name: &[u8]) -> io::Result<()> {
        nosys()
    }
    fn rmdir(&self, ctx: Context, parent: u64, name: &[u8]) -> io::Result<()> {
        nosys()
    }
    /// RENAME / RENAME2; `flags` are renameat2(2) flags.
    fn rename(
        &self,
        ctx: Context,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        nosys()
    }
    fn link(&self, ctx: Context, ino: u64, newparent: u64, newname: &[u8]) -> io::Result<Entry> {
        nosys()
    }
    /// FUSE_OPEN: returns `(fh, fopen flags)`.
    fn open(&self, ctx: Context, ino: u64, flags: u32) -> io::Result<(u64, u32)> {
        nosys()
    }
    /// FUSE_CREATE: returns the entry, `fh` and fopen flags.
    fn create(
        &self,
        ctx: Context,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> io::Result<(Entry, u64, u32)> {
        nosys()
    }
    /// FUSE_READ: at most `size` bytes at `offset`.
    fn read(&self, ctx: Context, ino: u64, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        nosys()
    }
    /// FUSE_READ into `out` (the transport's zero-copy path; at most `size` bytes and at most
    /// `out.room()`). Returns the bytes produced. Default: [`Self::read`], then a copy.
    fn read_into(
        &self,
        ctx: Context,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut dyn ReadSink,
    ) -> io::Result<usize> {
        let d = self.read(ctx, ino, fh, offset, size)?;
        out.put(&d)
    }
    /// FUSE_WRITE from `data` (the transport's zero-copy path). Returns bytes written.
    /// Default: copy the payload, then [`Self::write`].
    fn write_from(
        &self,
        ctx: Context,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &mut dyn WriteSource,
        flags: u32,
    ) -> io::Result<usize> {
        let v = data.to_vec()?;
        self.write(ctx, ino, fh, offset, &v, flags)
    }
    /// FUSE_WRITE: returns bytes written.
    fn write(
        &self,
        ctx: Context,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: u32,
    ) -> io::Result<usize> {
        nosys()
    }
    fn statfs(&self, ctx: Context, ino: u64) -> io::Result<libc::statvfs64> {
        nosys()
    }
    fn release(&self, ctx: Context, ino: u64, fh: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self, ctx: Context, ino: u64, fh: u64) -> io::Result<()> {
        nosys()
    }
    fn fsync(&self, ctx: Context, ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        nosys()
    }
    fn setxattr(
        &self,
        ctx: Context,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        nosys()
    }
    /// FUSE_GETXATTR: the whole value (the server handles the size-0 probe and ERANGE).
    fn getxattr(&self, ctx: Context, ino: u64, name: &[u8]) -> io::Result<Vec<u8>> {
        nosys()
    }
    /// FUSE_LISTXATTR: "name\0name\0..." (the server handles the size probe and ERANGE).
    fn listxattr(&self, ctx: Context, ino: u64) -> io::Result<Vec<u8>> {
        nosys()
    }
    fn removexattr(&self, ctx: Context, ino: u64, name: &[u8]) -> io::Result<()> {
        nosys()
    }
    /// FUSE_OPENDIR: returns `(fh, fopen flags)`.
    fn opendir(&self, ctx: Context, ino: u64, flags: u32) -> io::Result<(u64, u32)> {
        nosys()
    }
    /// FUSE_READDIR: entries starting at `offset` (0 = first); the server stops packing when the
    /// reply is full, so returning more than fits is fine.
    fn readdir(&self, ctx: Context, ino: u64, fh: u64, offset: u64) -> io::Result<Vec<DirEntry>> {
        nosys()
    }
    fn releasedir(&self, ctx: Context, ino: u64, fh: u64) -> io::Result<()> {
        Ok(())
    }
    fn fsyncdir(&self, ctx: Context, ino: u64, fh: u64, datasync: bool) -> io::Result<()> {
        nosys()
    }
    fn access(&self, ctx: Context, ino: u64, mask: u32) -> io::Result<()> {
        nosys()
    }
    /// FUSE_LSEEK (SEEK_DATA / SEEK_HOLE / SEEK_SET / SEEK_CUR / SEEK_END).
    fn lseek(&self, ctx: Context, ino: u64, fh: u64, offset: u64, whence: u32) -> io::Result<u64> {
        nosys()
    }
    fn fallocate(
        &self,
        ctx: Context,
        ino: u64,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        nosys()
    }
}
