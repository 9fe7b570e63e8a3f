//! FUSE request decoding and reply encoding (include/uapi/linux/fuse.h), independent of the
//! transport: [`Server::handle`] takes the bytes of a request (the device-readable part of a
//! virtio-fs descriptor chain, virtio 1.2 §5.11.6) and returns the reply bytes for the
//! device-writable part, never longer than that part.
//!
//! Rules: an unknown opcode gets `ENOSYS`; a body shorter than its opcode's struct, a missing
//! NUL in a name, or a `len` that disagrees with the bytes received gets `EINVAL`; a reply that
//! would not fit the writable part gets `ERANGE` (or a truncated READ). FORGET, BATCH_FORGET and
//! INTERRUPT get no reply. Nothing here panics on guest input.

use std::io;
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use log::{debug, trace};
use vm_memory::ByteValued;

use super::abi::{self, opcode, read_cstr, read_struct, InHeader, OutHeader};
use super::filesystem::{Context, Entry, FileSystem, SetAttr, Stat, TimeSpec};
use super::io::{ReadSink, VecSink, WriteSource};

/// Largest WRITE payload we accept (`fuse_init_out.max_write`).
pub const MAX_WRITE: u32 = 1 << 20;
/// Largest request we read from a chain: a WRITE of [`MAX_WRITE`] plus headers.
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;
/// `max_pages` in INIT (256 pages = 1 MiB READs).
const MAX_PAGES: u16 = 256;

/// Decodes FUSE requests and dispatches them to a [`FileSystem`].
pub struct Server<F: FileSystem> {
    fs: F,
    initialized: AtomicBool,
    minor: AtomicU32,
}

/// What a handler produced: the reply body, or an errno.
type Reply = Result<Vec<u8>, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn einval<T>() -> Result<T, i32> {
    Err(libc::EINVAL)
}

fn body<T: ByteValued>(v: T) -> Vec<u8> {
    v.as_slice().to_vec()
}

/// `struct stat64` → `struct fuse_attr`.
pub fn to_attr(st: &Stat) -> abi::Attr {
    abi::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn entry_out(e: &Entry) -> abi::EntryOut {
    abi::EntryOut {
        nodeid: e.ino,
        generation: e.generation,
        entry_valid: e.entry_timeout.as_secs(),
        attr_valid: e.attr_timeout.as_secs(),
        entry_valid_nsec: e.entry_timeout.subsec_nanos(),
        attr_valid_nsec: e.attr_timeout.subsec_nanos(),
        attr: to_attr(&e.attr),
    }
}

fn attr_out(st: &Stat, t: Duration) -> abi::AttrOut {
    abi::AttrOut {
        attr_valid: t.as_secs(),
        attr_valid_nsec: t.subsec_nanos(),
        dummy: 0,
        attr: to_attr(st),
    }
}

/// A NUL-terminated name, refusing trailing garbage-free parsing errors as EINVAL.
fn name(buf: &[u8]) -> Result<(&[u8], &[u8]), i32> {
    read_cstr(buf).ok_or(libc::EINVAL)
}

fn parse<T: ByteValued + Default>(buf: &[u8]) -> Result<(T, &[u8]), i32> {
    read_struct::<T>(buf).ok_or(libc::EINVAL)
}

/// Answers an xattr value/list request: size 0 → `fuse_getxattr_out` with the needed size;
/// too small → ERANGE; else the bytes.
fn xattr_reply(data: Vec<u8>, size: u32) -> Reply {
    if size == 0 {
        let len = u32::try_from(data.len()).map_err(|_| libc::E2BIG)?;
        Ok(body(abi::GetxattrOut {
            size: len,
            padding: 0,
        }))
    } else if data.len() > size as usize {
        Err(libc::ERANGE)
    } else {
        Ok(data)
    }
}

impl<F: FileSystem> Server<F> {
    /// Wraps a file system.
    pub fn new(fs: F) -> Self {
        Self {
            fs,
            initialized: AtomicBool::new(false),
            minor: AtomicU32::new(0),
        }
    }

    /// The file system.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// Handles one request. `req` is the readable part of the chain, `out_cap` the size of the
    /// writable part. Returns the reply (≤ `out_cap` bytes), or `None` when the op has no reply
    /// or no valid header could be read (nothing is written then).
    pub fn handle(&self, req: &[u8], out_cap: usize) -> Option<Vec<u8>> {
        let Some((h, rest)) = read_struct::<InHeader>(req) else {
            debug!(
                "fuse: request shorter than fuse_in_header ({} bytes)",
                req.len()
            );
            return None;
        };
        trace!(
            "fuse: {} unique={} node={} len={}",
            abi::opcode_name(h.opcode),
            h.unique,
            h.nodeid,
            h.len
        );
        let result = if h.len as usize != req.len() {
            // The header must describe exactly the bytes we got (fuse.h: len = total length).
            debug!(
                "fuse: {} len {} != {} bytes received",
                abi::opcode_name(h.opcode),
                h.len,
                req.len()
            );
            match h.opcode {
                opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => return None,
                _ => Err(libc::EINVAL),
            }
        } else {
            match h.opcode {
                opcode::FORGET => {
                    if let Some((f, _)) = read_struct::<abi::ForgetIn>(rest) {
                        self.fs.forget(h.nodeid, f.nlookup);
                    }
                    return None;
                }
                opcode::BATCH_FORGET => {
                    self.batch_forget(rest);
                    return None;
                }
                opcode::INTERRUPT => return None,
                opcode::INIT => self.init(rest),
                _ if !self.initialized.load(Ordering::Acquire) => Err(libc::EIO),
                _ => self.dispatch(&h, rest, out_cap),
            }
        };
        Some(encode(h.unique, result, out_cap))
    }

    /// The checks every request passes before dispatch: `len` = the bytes received
    /// (`received`), and INIT done.
    fn precheck(&self, h: &InHeader, received: usize) -> Result<(), i32> {
        if h.len as usize != received {
            debug!(
                "fuse: {} len {} != {} bytes received",
                abi::opcode_name(h.opcode),
                h.len,
                received
            );
            return Err(libc::EINVAL);
        }
        if !self.initialized.load(Ordering::Acquire) {
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// Zero-copy READ (the vhost-user transport): `req` is the whole request, `fuse_in_header`
    /// and `fuse_read_in`; the data is read straight into `data`, the writable part after the
    /// out header. Returns the `fuse_out_header` to write in front of it (its `len` counts the
    /// data), or `None` when `req` has no header (nothing is written then).
    pub fn handle_read(&self, req: &[u8], data: &mut dyn ReadSink) -> Option<OutHeader> {
        let (h, rest) = read_struct::<InHeader>(req)?;
        let hl = size_of::<OutHeader>();
        let result = self.precheck(&h, req.len()).and_then(|()| {
            if h.opcode != opcode::READ {
                return Err(libc::EINVAL);
            }
            let (r, _) = parse::<abi::ReadIn>(rest)?;
            let ctx = Context {
                uid: h.uid,
                gid: h.gid,
                pid: h.pid,
            };
            let size = (r.size as usize).min(data.room()).min(MAX_REQUEST);
            self.fs
                .read_into(ctx, h.nodeid, r.fh, r.offset, size as u32, data)
                .map_err(errno)
        });
        Some(match result {
            Ok(n) => OutHeader {
                len: (hl + n) as u32,
                error: 0,
                unique: h.unique,
            },
            Err(e) => OutHeader {
                len: hl as u32,
                error: -e.abs(),
                unique: h.unique,
            },
        })
    }

    /// Zero-copy WRITE (the vhost-user transport): `head` is `fuse_in_header` and
    /// `fuse_write_in`, `payload` the rest of the device-readable part, written straight to the
    /// file. Returns the reply (≤ `out_cap` bytes), `None` when `head` has no header.
    pub fn handle_write(
        &self,
        head: &[u8],
        payload: &mut dyn WriteSource,
        out_cap: usize,
    ) -> Option<Vec<u8>> {
        let (h, rest) = read_struct::<InHeader>(head)?;
        let result = self
            .precheck(&h, head.len() + payload.len())
            .and_then(|()| {
                let (w, extra) = parse::<abi::WriteIn>(rest)?;
                if h.opcode != opcode::WRITE
                    || !extra.is_empty()
                    || w.size as usize != payload.len()
                    || w.size > MAX_WRITE
                {
                    return einval();
                }
                let ctx = Context {
                    uid: h.uid,
                    gid: h.gid,
                    pid: h.pid,
                };
                let n = self
                    .fs
                    .write_from(ctx, h.nodeid, w.fh, w.offset, payload, w.flags)
                    .map_err(errno)?;
                Ok(body(abi::WriteOut {
                    size: n as u32,
                    padding: 0,
                }))
            });
        Some(encode(h.unique, result, out_cap))
    }

    fn batch_forget(&self, rest: &[u8]) {
        let Some((b, mut rest)) = read_struct::<abi::BatchForgetIn>(rest) else {
            return;
        };
        for _ in 0..b.count {
            let Some((one, r)) = read_struct::<abi::ForgetOne>(rest) else {
                return;
            };
            self.fs.forget(one.nodeid, one.nlookup);
            rest = r;
        }
    }

    fn init(&self, rest: &[u8]) -> Reply {
        let (i, _) = parse::<abi::InitIn>(rest)?;
        if i.major != abi::KERNEL_VERSION {
            debug!("fuse: INIT major {} unsupported", i.major);
            // fuse.h: reply with our major only; the kernel retries or gives up.
            let out = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            return Ok(body(out));
        }
        if i.minor < abi::MIN_KERNEL_MINOR_VERSION {
            return Err(libc::EPROTO);
        }
        use abi::init_flags as f;
        let supported = f::ASYNC_READ
            | f::BIG_WRITES
            | f::DO_READDIRPLUS
            | f::READDIRPLUS_AUTO
            | f::PARALLEL_DIROPS
            | f::MAX_PAGES
            | f::ATOMIC_O_TRUNC
            | f::AUTO_INVAL_DATA;
        let want = self.fs.init(i.flags).map_err(errno)?;
        let minor = i.minor.min(abi::KERNEL_MINOR_VERSION);
        self.minor.store(minor, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
        Ok(body(abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead: i.max_readahead,
            flags: i.flags & (supported | want),
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            ..Default::default()
        }))
    }

    fn dispatch(&self, h: &InHeader, rest: &[u8], out_cap: usize) -> Reply {
        let ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
        };
        let fs = &self.fs;
        let ino = h.nodeid;
        let entry = |r: io::Result<Entry>| r.map(|e| body(entry_out(&e))).map_err(errno);
        match h.opcode {
            opcode::LOOKUP => {
                let (n, _) = name(rest)?;
                entry(fs.lookup(ctx, ino, n))
            }
            opcode::GETATTR => {
                let (g, _) = parse::<abi::GetattrIn>(rest)?;
                let fh = (g.getattr_flags & abi::GETATTR_FH != 0).then_some(g.fh);
                let (st, t) = fs.getattr(ctx, ino, fh).map_err(errno)?;
                Ok(body(attr_out(&st, t)))
            }
            opcode::SETATTR => {
                let (s, _) = parse::<abi::SetattrIn>(rest)?;
                let set = decode_setattr(&s);
                let (st, t) = fs.setattr(ctx, ino, set).map_err(errno)?;
                Ok(body(attr_out(&st, t)))
            }
            opcode::READLINK => fs.readlink(ctx, ino).map_err(errno),
            opcode::SYMLINK => {
                let (n, rest) = name(rest)?;
                let (target, _) = name(rest)?;
                entry(fs.symlink(ctx, target, ino, n))
            }
            opcode::MKNOD => {
                let (m, rest) = parse::<abi::MknodIn>(rest)?;
                let (n, _) = name(rest)?;
                entry(fs.mknod(ctx, ino, n, m.mode, m.rdev, m.umask))
            }
            opcode::MKDIR => {
                let (m, rest) = parse::<abi::MkdirIn>(rest)?;
                let (n, _) = name(rest)?;
                entry(fs.mkdir(ctx, ino, n, m.mode, m.umask))
            }
            opcode::UNLINK => {
                let (n, _) = name(rest)?;
                fs.unlink(ctx, ino, n).map(|()| Vec::new()).map_err(errno)
            }
            opcode::RMDIR => {
                let (n, _) = name(rest)?;
                fs.rmdir(ctx, ino, n).map(|()| Vec::new()).map_err(errno)
            }
            opcode::RENAME => {
                let (r, rest) = parse::<abi::RenameIn>(rest)?;
                let (old, rest) = name(rest)?;
                let (new, _) = name(rest)?;
                fs.rename(ctx, ino, old, r.newdir, new, 0)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::RENAME2 => {
                let (r, rest) = parse::<abi::Rename2In>(rest)?;
                let (old, rest) = name(rest)?;
                let (new, _) = name(rest)?;
                fs.rename(ctx, ino, old, r.newdir, new, r.flags)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::LINK => {
                let (l, rest) = parse::<abi::LinkIn>(rest)?;
                let (n, _) = name(rest)?;
                entry(fs.link(ctx, l.oldnodeid, ino, n))
            }
            opcode::OPEN => {
                let (o, _) = parse::<abi::OpenIn>(rest)?;
                let (fh, flags) = fs.open(ctx, ino, o.flags).map_err(errno)?;
                Ok(body(abi::OpenOut {
                    fh,
                    open_flags: flags,
                    padding: 0,
                }))
            }
            opcode::CREATE => {
                let (c, rest) = parse::<abi::CreateIn>(rest)?;
                let (n, _) = name(rest)?;
                let (e, fh, flags) = fs
                    .create(ctx, ino, n, c.mode, c.flags, c.umask)
                    .map_err(errno)?;
                let mut out = body(entry_out(&e));
                out.extend_from_slice(
                    abi::OpenOut {
                        fh,
                        open_flags: flags,
                        padding: 0,
                    }
                    .as_slice(),
                );
                Ok(out)
            }
            opcode::READ => {
                let (r, _) = parse::<abi::ReadIn>(rest)?;
                let room = out_cap.saturating_sub(size_of::<OutHeader>());
                let size = (r.size as usize).min(room).min(MAX_REQUEST) as u32;
                let mut sink = VecSink::new(size as usize);
                fs.read_into(ctx, ino, r.fh, r.offset, size, &mut sink)
                    .map_err(errno)?;
                Ok(sink.buf)
            }
            opcode::WRITE => {
                let (w, data) = parse::<abi::WriteIn>(rest)?;
                if w.size as usize != data.len() || w.size > MAX_WRITE {
                    return einval();
                }
                let n = fs
                    .write_from(ctx, ino, w.fh, w.offset, &mut { data }, w.flags)
                    .map_err(errno)?;
                Ok(body(abi::WriteOut {
                    size: n as u32,
                    padding: 0,
                }))
            }
            opcode::STATFS => {
                let s = fs.statfs(ctx, ino).map_err(errno)?;
                Ok(body(abi::StatfsOut {
                    st: abi::Kstatfs {
                        blocks: s.f_blocks,
                        bfree: s.f_bfree,
                        bavail: s.f_bavail,
                        files: s.f_files,
                        ffree: s.f_ffree,
                        bsize: s.f_bsize as u32,
                        namelen: s.f_namemax as u32,
                        frsize: s.f_frsize as u32,
                        ..Default::default()
                    },
                }))
            }
            opcode::RELEASE => {
                let (r, _) = parse::<abi::ReleaseIn>(rest)?;
                fs.release(ctx, ino, r.fh)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::RELEASEDIR => {
                let (r, _) = parse::<abi::ReleaseIn>(rest)?;
                fs.releasedir(ctx, ino, r.fh)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::FLUSH => {
                let (f, _) = parse::<abi::FlushIn>(rest)?;
                fs.flush(ctx, ino, f.fh).map(|()| Vec::new()).map_err(errno)
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let (f, _) = parse::<abi::FsyncIn>(rest)?;
                let datasync = f.fsync_flags & abi::FSYNC_FDATASYNC != 0;
                let r = if h.opcode == opcode::FSYNC {
                    fs.fsync(ctx, ino, f.fh, datasync)
                } else {
                    fs.fsyncdir(ctx, ino, f.fh, datasync)
                };
                r.map(|()| Vec::new()).map_err(errno)
            }
            opcode::SETXATTR => {
                let (s, rest) = parse::<abi::SetxattrIn>(rest)?;
                let (n, value) = name(rest)?;
                if value.len() != s.size as usize {
                    return einval();
                }
                fs.setxattr(ctx, ino, n, value, s.flags)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::GETXATTR => {
                let (g, rest) = parse::<abi::GetxattrIn>(rest)?;
                let (n, _) = name(rest)?;
                xattr_reply(fs.getxattr(ctx, ino, n).map_err(errno)?, g.size)
            }
            opcode::LISTXATTR => {
                let (g, _) = parse::<abi::GetxattrIn>(rest)?;
                xattr_reply(fs.listxattr(ctx, ino).map_err(errno)?, g.size)
            }
            opcode::REMOVEXATTR => {
                let (n, _) = name(rest)?;
                fs.removexattr(ctx, ino, n)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::OPENDIR => {
                let (o, _) = parse::<abi::OpenIn>(rest)?;
                let (fh, flags) = fs.opendir(ctx, ino, o.flags).map_err(errno)?;
                Ok(body(abi::OpenOut {
                    fh,
                    open_flags: flags,
                    padding: 0,
                }))
            }
            opcode::READDIR | opcode::READDIRPLUS => {
                let (r, _) = parse::<abi::ReadIn>(rest)?;
                let room = out_cap
                    .saturating_sub(size_of::<OutHeader>())
                    .min(r.size as usize);
                self.readdir(ctx, ino, &r, room, h.opcode == opcode::READDIRPLUS)
            }
            opcode::ACCESS => {
                let (a, _) = parse::<abi::AccessIn>(rest)?;
                fs.access(ctx, ino, a.mask)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::LSEEK => {
                let (l, _) = parse::<abi::LseekIn>(rest)?;
                let off = fs
                    .lseek(ctx, ino, l.fh, l.offset, l.whence)
                    .map_err(errno)?;
                Ok(body(abi::LseekOut { offset: off }))
            }
            opcode::FALLOCATE => {
                let (f, _) = parse::<abi::FallocateIn>(rest)?;
                fs.fallocate(ctx, ino, f.fh, f.mode, f.offset, f.length)
                    .map(|()| Vec::new())
                    .map_err(errno)
            }
            opcode::DESTROY => {
                fs.destroy();
                self.initialized.store(false, Ordering::Release);
                Ok(Vec::new())
            }
            _ => Err(libc::ENOSYS),
        }
    }

    fn readdir(&self, ctx: Context, ino: u64, r: &abi::ReadIn, room: usize, plus: bool) -> Reply {
        let entries = self.fs.readdir(ctx, ino, r.fh, r.offset).map_err(errno)?;
        let mut out = Vec::new();
        for d in entries {
            let namelen = d.name.len();
            let rec = abi::dirent_size(namelen);
            let need = rec + if plus { size_of::<abi::EntryOut>() } else { 0 };
            if out.len() + need > room {
                break;
            }
            if plus {
                // "." and ".." carry a zeroed entry: the kernel skips them
                // (fuse_direntplus_link); others get a real LOOKUP (one nlookup each).
                let e = if d.name == b"." || d.name == b".." {
                    abi::EntryOut::default()
                } else {
                    match self.fs.lookup(ctx, ino, &d.name) {
                        Ok(e) => entry_out(&e),
                        Err(_) => abi::EntryOut::default(),
                    }
                };
                out.extend_from_slice(e.as_slice());
            }
            let de = abi::Dirent {
                ino: d.ino,
                off: d.offset,
                namelen: namelen as u32,
                type_: d.type_,
            };
            out.extend_from_slice(de.as_slice());
            out.extend_from_slice(&d.name);
            out.resize(out.len() + (rec - size_of::<abi::Dirent>() - namelen), 0);
        }
        Ok(out)
    }
}

fn decode_setattr(s: &abi::SetattrIn) -> SetAttr {
    use abi::fattr as f;
    let v = s.valid;
    let time = |set: u32, now: u32, sec: u64, nsec: u32| {
        if v & now != 0 {
            Some(TimeSpec::Now)
        } else if v & set != 0 {
            Some(TimeSpec::At(sec as i64, nsec))
        } else {
            None
        }
    };
    SetAttr {
        mode: (v & f::MODE != 0).then_some(s.mode),
        uid: (v & f::UID != 0).then_some(s.uid),
        gid: (v & f::GID != 0).then_some(s.gid),
        size: (v & f::SIZE != 0).then_some(s.size),
        atime: time(f::ATIME, f::ATIME_NOW, s.atime, s.atimensec),
        mtime: time(f::MTIME, f::MTIME_NOW, s.mtime, s.mtimensec),
        fh: (v & f::FH != 0).then_some(s.fh),
    }
}

/// Builds `fuse_out_header` + body, capped at `out_cap`: a body that does not fit becomes
/// ERANGE (READ bodies are already sized to fit).
fn encode(unique: u64, result: Reply, out_cap: usize) -> Vec<u8> {
    let hl = size_of::<OutHeader>();
    let (error, data) = match result {
        Ok(d) if hl + d.len() <= out_cap => (0, d),
        Ok(_) => (-libc::ERANGE, Vec::new()),
        Err(e) => (-e.abs(), Vec::new()),
    };
    let h = OutHeader {
        len: (hl + data.len()) as u32,
        error,
        unique,
    };
    let mut out = Vec::with_capacity(hl + data.len());
    out.extend_from_slice(h.as_slice());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl FileSystem for Nothing {}

    fn req(op: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode: op,
            unique,
            nodeid: 1,
            ..Default::default()
        };
        let mut v = h.as_slice().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn out_header(reply: &[u8]) -> OutHeader {
        read_struct::<OutHeader>(reply).unwrap().0
    }

    fn init(s: &Server<Nothing>) {
        let i = abi::InitIn {
            major: 7,
            minor: 38,
            max_readahead: 65536,
            flags: u32::MAX,
        };
        let r = s.handle(&req(opcode::INIT, 1, i.as_slice()), 4096).unwrap();
        assert_eq!(out_header(&r).error, 0);
        let (o, _) = read_struct::<abi::InitOut>(&r[16..]).unwrap();
        assert_eq!((o.major, o.minor), (7, 31));
    }

    #[test]
    fn unknown_opcode_is_enosys_and_bad_lengths_einval() {
        let s = Server::new(Nothing);
        // Before INIT: EIO.
        let r = s.handle(&req(opcode::GETATTR, 2, &[0; 16]), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::EIO);
        init(&s);
        let r = s.handle(&req(9999, 3, &[]), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::ENOSYS);
        assert_eq!(out_header(&r).unique, 3);
        // Known op, unimplemented by the fs: ENOSYS too.
        let r = s.handle(&req(opcode::LOOKUP, 4, b"x\0"), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::ENOSYS);
        // Short body.
        let r = s.handle(&req(opcode::GETATTR, 5, &[0; 3]), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::EINVAL);
        // Name without NUL.
        let r = s.handle(&req(opcode::LOOKUP, 6, b"abc"), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::EINVAL);
        // len disagrees with the bytes.
        let mut bad = req(opcode::LOOKUP, 7, b"x\0");
        bad.push(0);
        let r = s.handle(&bad, 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::EINVAL);
        // Garbage shorter than a header: no reply.
        assert!(s.handle(&[1, 2, 3], 4096).is_none());
        // FORGET: no reply.
        assert!(s.handle(&req(opcode::FORGET, 8, &[1; 8]), 4096).is_none());
        // WRITE whose size disagrees with the payload.
        let w = abi::WriteIn {
            size: 100,
            ..Default::default()
        };
        let mut b = w.as_slice().to_vec();
        b.extend_from_slice(&[0; 10]);
        let r = s.handle(&req(opcode::WRITE, 9, &b), 4096).unwrap();
        assert_eq!(out_header(&r).error, -libc::EINVAL);
    }

    #[test]
    fn random_garbage_never_panics() {
        let s = Server::new(Nothing);
        init(&s);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000usize {
            let mut buf = vec![0u8; n % 300];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if buf.len() >= 40 {
                let len = buf.len() as u32;
                buf[0..4].copy_from_slice(&len.to_le_bytes());
                buf[4..8].copy_from_slice(&((x % 52) as u32).to_le_bytes());
            }
            if let Some(r) = s.handle(&buf, (x % 200) as usize + 16) {
                assert!(r.len() <= (x % 200) as usize + 16);
            }
        }
    }
}
