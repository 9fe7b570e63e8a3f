//! The guest's view of ownership and mode, kept apart from the host's (docs/fsd.md, "Host
//! ownership"): every node ax-fsd writes into the upper layer belongs to the host user ax-fsd
//! runs as and never carries a set-user-ID or set-group-ID bit on the host. What the guest set
//! (its uid, gid and the full mode incl. `S_ISUID`/`S_ISGID`) is stored, only where it differs
//! from the host's inode, in the xattr [`XATTR`] (`user.ax.owner`, value
//! `"<uid>:<gid>:<mode in octal>"`, e.g. `"0:0:4755"`), the way virtiofsd's `--xattrmap`
//! keeps guest ownership in an xattr. Attributes sent to the guest are the host's with that
//! override applied ([`apply`]).
//!
//! Only regular files and directories can carry the xattr (`user.*` is refused on symlinks,
//! FIFOs and sockets by the kernel): those show the host owner to the guest.

use std::io;
use std::os::fd::AsRawFd;

use super::sys;

/// The xattr holding the guest's view (`user.ax.owner`). Private: hidden from the guest,
/// never set or removed by it, never copied up from a lower layer.
pub const XATTR: &[u8] = b"user.ax.owner";

/// Mode bits never set on the host: set-user-ID and set-group-ID.
pub const HOST_STRIP: u32 = libc::S_ISUID | libc::S_ISGID;

/// The guest-visible owner and permission bits of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    /// `st_uid` the guest sees.
    pub uid: u32,
    /// `st_gid` the guest sees.
    pub gid: u32,
    /// Permission bits the guest sees (`0o7777`: incl. set-ID and sticky bits).
    pub mode: u32,
}

impl Guest {
    /// The xattr value: `"<uid>:<gid>:<mode octal>"`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}:{:o}", self.uid, self.gid, self.mode & 0o7777).into_bytes()
    }

    /// Parses an xattr value; `None` when malformed.
    pub fn decode(v: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.split(':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        if it.next().is_some() || mode > 0o7777 {
            return None;
        }
        Some(Self { uid, gid, mode })
    }

    /// The guest view of a host inode with no override: its own owner and bits.
    pub fn of_host(st: &libc::stat64) -> Self {
        Self {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        }
    }
}

/// Can this file type carry a `user.*` xattr?
pub fn can_hold(st: &libc::stat64) -> bool {
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// The stored override of an upper node, if any (unreadable or malformed → none).
pub fn read(fd: &impl AsRawFd, st: &libc::stat64) -> Option<Guest> {
    if !can_hold(st) {
        return None;
    }
    match sys::getxattr_fd(fd, XATTR) {
        Ok(Some(v)) => Guest::decode(&v),
        _ => None,
    }
}

/// The guest's view of an upper node: host attributes with the stored override.
pub fn guest_view(fd: &impl AsRawFd, st: &libc::stat64) -> Guest {
    read(fd, st).unwrap_or_else(|| Guest::of_host(st))
}

/// Applies the stored override of `fd` to its host attributes `st`.
pub fn apply(fd: &impl AsRawFd, st: &mut libc::stat64) {
    if let Some(g) = read(fd, st) {
        st.st_uid = g.uid;
        st.st_gid = g.gid;
        st.st_mode = (st.st_mode & libc::S_IFMT) | (g.mode & 0o7777);
    }
}

/// Makes an upper node show `want` to the guest: the host mode becomes `want.mode` without
/// the set-ID bits (never for symlinks), the host owner stays, and the xattr records `want`
/// when it differs from the host inode (it is removed when equal). Types that cannot carry the
/// xattr keep the host owner.
pub fn set(fd: &impl AsRawFd, want: Guest) -> io::Result<()> {
    let st = sys::fstat(fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Ok(());
    }
    let host_mode = want.mode & 0o7777 & !HOST_STRIP;
    if st.st_mode & 0o7777 != host_mode {
        sys::chmod_fd(fd, host_mode)?;
    }
    if !can_hold(&st) {
        return Ok(());
    }
    let host = Guest {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: host_mode,
    };
    if host == want {
        match sys::removexattr_fd(fd, XATTR) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e),
            _ => Ok(()),
        }
    } else {
        sys::setxattr_fd(fd, XATTR, &want.encode(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let g = Guest {
            uid: 0,
            gid: 5,
            mode: 0o4755,
        };
        assert_eq!(g.encode(), b"0:5:4755");
        assert_eq!(Guest::decode(b"0:5:4755"), Some(g));
        for bad in [
            &b""[..],
            b"1:2",
            b"1:2:3:4",
            b"a:1:1",
            b"1:1:77777",
            b"1:1:9",
        ] {
            assert_eq!(Guest::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn set_strips_host_setid_and_keeps_the_guest_view() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let fd = sys::open_root(d.path()).unwrap();
        let f = sys::openat(&fd, b"f", libc::O_PATH, 0).unwrap();
        let host = sys::fstat(&f).unwrap();
        let want = Guest {
            uid: host.st_uid + 1,
            gid: host.st_gid + 2,
            mode: 0o6755,
        };
        set(&f, want).unwrap();
        let st = sys::fstat(&f).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o755, "no set-ID bit on the host");
        assert_eq!((st.st_uid, st.st_gid), (host.st_uid, host.st_gid));
        let mut seen = st;
        apply(&f, &mut seen);
        assert_eq!(seen.st_mode & 0o7777, 0o6755);
        assert_eq!((seen.st_uid, seen.st_gid), (want.uid, want.gid));
        // Back to the host's own view: the xattr goes away.
        set(&f, Guest::of_host(&st)).unwrap();
        assert_eq!(sys::getxattr_fd(&f, XATTR).unwrap(), None);
    }
}
