//! The FUSE kernel ABI as it travels over virtio-fs queues (virtio 1.2 §5.11.6: every request is
//! a `fuse_in_header` plus an op-specific body in the device-readable part of a descriptor chain,
//! every reply a `fuse_out_header` plus body in the device-writable part).
//!
//! Layouts follow `include/uapi/linux/fuse.h`, protocol 7.31 (the minor version we negotiate).
//! All structs are `#[repr(C)]`, contain no implicit padding (explicit `padding` fields as in the
//! header) and are [`ByteValued`], so they are read from untrusted bytes by copying into a
//! default value ([`read_struct`]): any byte pattern is a valid value, short input is an error,
//! nothing panics.

use vm_memory::ByteValued;

/// `FUSE_KERNEL_VERSION` (fuse.h).
pub const KERNEL_VERSION: u32 = 7;
/// The `FUSE_KERNEL_MINOR_VERSION` we speak (fuse.h 7.31; newer kernels accept older servers).
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Lowest minor accepted from the driver (virtio-fs needs ≥ 7.27).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 27;
/// `FUSE_ROOT_ID` (fuse.h): the node id of the mount root.
pub const ROOT_ID: u64 = 1;

macro_rules! opcodes {
    ($($(#[$m:meta])* $name:ident = $v:expr,)*) => {
        /// `enum fuse_opcode` (fuse.h).
        #[allow(missing_docs)]
        pub mod opcode {
            $($(#[$m])* pub const $name: u32 = $v;)*
        }
        /// The opcode's name from fuse.h, for logs.
        pub fn opcode_name(op: u32) -> &'static str {
            match op {
                $($v => stringify!($name),)*
                _ => "UNKNOWN",
            }
        }
    };
}

opcodes! {
    LOOKUP = 1,
    FORGET = 2,
    GETATTR = 3,
    SETATTR = 4,
    READLINK = 5,
    SYMLINK = 6,
    MKNOD = 8,
    MKDIR = 9,
    UNLINK = 10,
    RMDIR = 11,
    RENAME = 12,
    LINK = 13,
    OPEN = 14,
    READ = 15,
    WRITE = 16,
    STATFS = 17,
    RELEASE = 18,
    FSYNC = 20,
    SETXATTR = 21,
    GETXATTR = 22,
    LISTXATTR = 23,
    REMOVEXATTR = 24,
    FLUSH = 25,
    INIT = 26,
    OPENDIR = 27,
    READDIR = 28,
    RELEASEDIR = 29,
    FSYNCDIR = 30,
    GETLK = 31,
    SETLK = 32,
    SETLKW = 33,
    ACCESS = 34,
    CREATE = 35,
    INTERRUPT = 36,
    BMAP = 37,
    DESTROY = 38,
    IOCTL = 39,
    POLL = 40,
    NOTIFY_REPLY = 41,
    BATCH_FORGET = 42,
    FALLOCATE = 43,
    READDIRPLUS = 44,
    RENAME2 = 45,
    LSEEK = 46,
    COPY_FILE_RANGE = 47,
    SETUPMAPPING = 48,
    REMOVEMAPPING = 49,
    SYNCFS = 50,
}

/// `fuse_init_in.flags` / `fuse_init_out.flags` bits (fuse.h, "INIT request/reply flags").
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const POSIX_LOCKS: u32 = 1 << 1;
    pub const FILE_OPS: u32 = 1 << 2;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const EXPORT_SUPPORT: u32 = 1 << 4;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DONT_MASK: u32 = 1 << 6;
    pub const SPLICE_WRITE: u32 = 1 << 7;
    pub const SPLICE_MOVE: u32 = 1 << 8;
    pub const SPLICE_READ: u32 = 1 << 9;
    pub const FLOCK_LOCKS: u32 = 1 << 10;
    pub const HAS_IOCTL_DIR: u32 = 1 << 11;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const WRITEBACK_CACHE: u32 = 1 << 16;
    pub const NO_OPEN_SUPPORT: u32 = 1 << 17;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const HANDLE_KILLPRIV: u32 = 1 << 19;
    pub const POSIX_ACL: u32 = 1 << 20;
    pub const ABORT_ERROR: u32 = 1 << 21;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u32 = 1 << 24;
    pub const EXPLICIT_INVAL_DATA: u32 = 1 << 25;
}

/// `fuse_setattr_in.valid` bits (fuse.h, `FATTR_*`).
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags` bits (fuse.h, `FOPEN_*`).
#[allow(missing_docs)]
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NONSEEKABLE: u32 = 1 << 2;
    pub const CACHE_DIR: u32 = 1 << 3;
}

/// `fuse_getattr_in.getattr_flags`: `FUSE_GETATTR_FH` (fuse.h).
pub const GETATTR_FH: u32 = 1 << 0;
/// `fuse_release_in.release_flags`: `FUSE_RELEASE_FLUSH` (fuse.h).
pub const RELEASE_FLUSH: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`: `FUSE_FSYNC_FDATASYNC` (fuse.h).
pub const FSYNC_FDATASYNC: u32 = 1 << 0;

macro_rules! abi_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty,)* } size $size:expr) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        // SAFETY: plain `#[repr(C)]` integers without implicit padding (checked by the size
        // assertion below): every byte pattern is a valid value.
        unsafe impl ByteValued for $name {}
        const _: () = assert!(std::mem::size_of::<$name>() == $size);
    };
}

abi_struct!(
    /// `struct fuse_in_header` (fuse.h): precedes every request.
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32,
    total_extlen: u16, padding: u16, } size 40);
abi_struct!(
    /// `struct fuse_out_header` (fuse.h): precedes every reply; `error` is 0 or `-errno`.
    OutHeader { len: u32, error: i32, unique: u64, } size 16);
abi_struct!(
    /// `struct fuse_attr` (fuse.h, 7.9+ layout with `blksize`; `flags` since 7.32, zero here).
    Attr { ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64, atimensec: u32,
    mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32, gid: u32, rdev: u32,
    blksize: u32, flags: u32, } size 88);
abi_struct!(
    /// `struct fuse_kstatfs` (fuse.h).
    Kstatfs { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32,
    namelen: u32, frsize: u32, padding: u32, spare: [u32; 6], } size 80);
abi_struct!(
    /// `struct fuse_entry_out` (fuse.h): reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE.
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64,
    entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr, } size 128);
abi_struct!(
    /// `struct fuse_forget_in` (fuse.h).
    ForgetIn { nlookup: u64, } size 8);
abi_struct!(
    /// `struct fuse_forget_one` (fuse.h): one element of BATCH_FORGET.
    ForgetOne { nodeid: u64, nlookup: u64, } size 16);
abi_struct!(
    /// `struct fuse_batch_forget_in` (fuse.h).
    BatchForgetIn { count: u32, dummy: u32, } size 8);
abi_struct!(
    /// `struct fuse_getattr_in` (fuse.h).
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64, } size 16);
abi_struct!(
    /// `struct fuse_attr_out` (fuse.h): reply to GETATTR and SETATTR.
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr, } size 104);
abi_struct!(
    /// `struct fuse_mknod_in` (fuse.h).
    MknodIn { mode: u32, rdev: u32, umask: u32, padding: u32, } size 16);
abi_struct!(
    /// `struct fuse_mkdir_in` (fuse.h).
    MkdirIn { mode: u32, umask: u32, } size 8);
abi_struct!(
    /// `struct fuse_rename_in` (fuse.h): RENAME body, followed by "oldname\0newname\0".
    RenameIn { newdir: u64, } size 8);
abi_struct!(
    /// `struct fuse_rename2_in` (fuse.h): RENAME2 body (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, ...).
    Rename2In { newdir: u64, flags: u32, padding: u32, } size 16);
abi_struct!(
    /// `struct fuse_link_in` (fuse.h).
    LinkIn { oldnodeid: u64, } size 8);
abi_struct!(
    /// `struct fuse_setattr_in` (fuse.h); `valid` holds [`fattr`] bits.
    SetattrIn { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
    mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
    unused4: u32, uid: u32, gid: u32, unused5: u32, } size 88);
abi_struct!(
    /// `struct fuse_open_in` (fuse.h): OPEN and OPENDIR.
    OpenIn { flags: u32, open_flags: u32, } size 8);
abi_struct!(
    /// `struct fuse_create_in` (fuse.h).
    CreateIn { flags: u32, mode: u32, umask: u32, open_flags: u32, } size 16);
abi_struct!(
    /// `struct fuse_open_out` (fuse.h); `open_flags` holds [`fopen`] bits.
    OpenOut { fh: u64, open_flags: u32, padding: u32, } size 16);
abi_struct!(
    /// `struct fuse_release_in` (fuse.h): RELEASE and RELEASEDIR.
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64, } size 24);
abi_struct!(
    /// `struct fuse_flush_in` (fuse.h).
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64, } size 24);
abi_struct!(
    /// `struct fuse_read_in` (fuse.h): READ, READDIR, READDIRPLUS.
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32,
    padding: u32, } size 40);
abi_struct!(
    /// `struct fuse_write_in` (fuse.h): followed by `size` bytes of data.
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32,
    padding: u32, } size 40);
abi_struct!(
    /// `struct fuse_write_out` (fuse.h).
    WriteOut { size: u32, padding: u32, } size 8);
abi_struct!(
    /// `struct fuse_statfs_out` (fuse.h).
    StatfsOut { st: Kstatfs, } size 80);
abi_struct!(
    /// `struct fuse_fsync_in` (fuse.h): FSYNC and FSYNCDIR.
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32, } size 16);
abi_struct!(
    /// `struct fuse_setxattr_in` (fuse.h, without `FUSE_SETXATTR_EXT`): followed by
    /// "name\0" and `size` bytes of value.
    SetxattrIn { size: u32, flags: u32, } size 8);
abi_struct!(
    /// `struct fuse_getxattr_in` (fuse.h): GETXATTR (followed by "name\0") and LISTXATTR.
    GetxattrIn { size: u32, padding: u32, } size 8);
abi_struct!(
    /// `struct fuse_getxattr_out` (fuse.h): the needed size when the request's `size` is 0.
    GetxattrOut { size: u32, padding: u32, } size 8);
abi_struct!(
    /// `struct fuse_access_in` (fuse.h).
    AccessIn { mask: u32, padding: u32, } size 8);
abi_struct!(
    /// `struct fuse_init_in` (fuse.h, the 7.31 part; newer kernels append `flags2` and unused
    /// words, which we ignore).
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32, } size 16);
abi_struct!(
    /// `struct fuse_init_out` (fuse.h, 7.31 layout, 64 bytes).
    InitOut { major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
    congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
    map_alignment: u16, flags2: u32, unused: [u32; 7], } size 64);
abi_struct!(
    /// `struct fuse_dirent` (fuse.h) without its trailing name; records are padded to 8 bytes
    /// (`FUSE_DIRENT_ALIGN`).
    Dirent { ino: u64, off: u64, namelen: u32, type_: u32, } size 24);
abi_struct!(
    /// `struct fuse_lseek_in` (fuse.h).
    LseekIn { fh: u64, offset: u64, whence: u32, padding: u32, } size 24);
abi_struct!(
    /// `struct fuse_lseek_out` (fuse.h).
    LseekOut { offset: u64, } size 8);
abi_struct!(
    /// `struct fuse_fallocate_in` (fuse.h).
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32, } size 32);
abi_struct!(
    /// `struct fuse_interrupt_in` (fuse.h).
    InterruptIn { unique: u64, } size 8);

/// Reads a `T` from the front of `buf` and returns it with the rest. `None` when `buf` is
/// shorter than `T`: never panics, whatever the bytes.
pub fn read_struct<T: ByteValued + Default>(buf: &[u8]) -> Option<(T, &[u8])> {
    let n = std::mem::size_of::<T>();
    let head = buf.get(..n)?;
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(head);
    Some((v, &buf[n..]))
}

/// Splits a NUL-terminated name off the front of `buf` (FUSE names are sent as "name\0").
/// `None` when there is no NUL.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Size of a dirent record for a name of `namelen` bytes, padded to 8 (`FUSE_DIRENT_SIZE`).
pub fn dirent_size(namelen: usize) -> usize {
    (std::mem::size_of::<Dirent>() + namelen + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_garbage_input_never_panics() {
        assert!(read_struct::<InHeader>(&[0u8; 39]).is_none());
        let (h, rest) = read_struct::<InHeader>(&[0xffu8; 45]).unwrap();
        assert_eq!(h.len, u32::MAX);
        assert_eq!(rest.len(), 5);
        assert!(read_cstr(b"abc").is_none());
        assert_eq!(read_cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(opcode_name(opcode::LOOKUP), "LOOKUP");
        assert_eq!(opcode_name(7), "UNKNOWN");
    }
}
