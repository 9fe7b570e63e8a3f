//! The read-only lower layer behind the union: either a host **directory** (opened component
//! by component with `O_PATH | O_NOFOLLOW`, see [`super::sys`]) or a **git tree** read on
//! demand from an object database ([`GitLower`]). The union ([`super::layers`]) only talks to
//! the lower layer through this module, so both behave the same: lookups, attributes,
//! listings, symlink targets, xattrs, reads and the data for copy-up.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::git::{GitFile, GitLower, GitNode};
use super::sys::{self, copy_data, err};

/// The lower layer.
// One per union, never moved around: the size of the git variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Lower {
    /// A host directory (its root, opened `O_RDONLY | O_DIRECTORY`). Never written.
    Dir(OwnedFd),
    /// A git tree in an object database (immutable by construction).
    Git(GitLower),
}

/// One node of the lower layer.
pub enum LowerNode {
    /// An `O_PATH` fd in the lower directory.
    Fd(OwnedFd),
    /// A tree entry.
    Git(GitNode),
}

/// A lower file opened for reading.
pub enum LowerFile {
    /// A host file descriptor (a lower directory's file or a large blob's temporary file).
    Fd(OwnedFd),
    /// Content in memory (a git blob).
    Mem(Arc<Vec<u8>>),
}

impl Lower {
    /// Is the lower layer immutable by construction (a git tree)? Then the guest may cache its
    /// names, attributes and pages indefinitely.
    pub fn immutable(&self) -> bool {
        matches!(self, Lower::Git(_))
    }

    /// The root node and its attributes.
    pub fn root(&self) -> io::Result<(LowerNode, libc::stat64)> {
        match self {
            Lower::Dir(fd) => {
                let r = sys::openat(fd, b".", libc::O_PATH, 0)?;
                let st = sys::fstat(&r)?;
                Ok((LowerNode::Fd(r), st))
            }
            Lower::Git(g) => {
                let n = g.root();
                Ok((LowerNode::Git(n), g.stat(&n)?))
            }
        }
    }

    /// `name` in the directory `dir` with its attributes; `Ok(None)` when absent.
    pub fn lookup(
        &self,
        dir: &LowerNode,
        name: &[u8],
    ) -> io::Result<Option<(LowerNode, libc::stat64)>> {
        match (self, dir) {
            (Lower::Dir(_), LowerNode::Fd(d)) => match sys::openat(d, name, libc::O_PATH, 0) {
                Ok(fd) => {
                    let st = sys::fstat(&fd)?;
                    Ok(Some((LowerNode::Fd(fd), st)))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                Err(e) => Err(e),
            },
            (Lower::Git(g), LowerNode::Git(d)) => match g.lookup(d, name)? {
                Some(n) => {
                    let st = g.stat(&n)?;
                    Ok(Some((LowerNode::Git(n), st)))
                }
                None => Ok(None),
            },
            _ => Err(err(libc::EIO)),
        }
    }

    /// The names in a lower directory with their `DT_*` types.
    pub fn list(&self, dir: &LowerNode) -> io::Result<Vec<(Vec<u8>, u32)>> {
        match (self, dir) {
            (Lower::Dir(_), LowerNode::Fd(l)) => {
                let mut out = Vec::new();
                for (name, dt) in sys::list_dir(l)? {
                    let t = if dt == libc::DT_UNKNOWN {
                        sys::dtype(sys::statat(l, &name)?.st_mode)
                    } else {
                        u32::from(dt)
                    };
                    out.push((name, t));
                }
                Ok(out)
            }
            (Lower::Git(g), LowerNode::Git(d)) => g.list(d),
            _ => Err(err(libc::EIO)),
        }
    }

    /// A lower symlink's target.
    pub fn readlink(&self, node: &LowerNode) -> io::Result<Vec<u8>> {
        match (self, node) {
            (Lower::Dir(_), LowerNode::Fd(fd)) => sys::readlink_fd(fd),
            (Lower::Git(g), LowerNode::Git(n)) => g.readlink(n),
            _ => Err(err(libc::EIO)),
        }
    }

    /// One xattr of a lower node (`Ok(None)` when absent; git nodes have none).
    pub fn getxattr(&self, node: &LowerNode, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match node {
            LowerNode::Fd(fd) => sys::getxattr_fd(fd, name),
            LowerNode::Git(_) => Ok(None),
        }
    }

    /// The xattr names of a lower node.
    pub fn listxattr(&self, node: &LowerNode) -> io::Result<Vec<Vec<u8>>> {
        match node {
            LowerNode::Fd(fd) => sys::listxattr_fd(fd),
            LowerNode::Git(_) => Ok(Vec::new()),
        }
    }

    /// Opens a lower regular file for reading. `tmp_dir` is where a large git blob is inflated
    /// into an unnamed temporary file (the upper layer's root).
    pub fn open_read(
        &self,
        node: &LowerNode,
        flags: i32,
        tmp_dir: &OwnedFd,
    ) -> io::Result<LowerFile> {
        match (self, node) {
            (Lower::Dir(_), LowerNode::Fd(fd)) => Ok(LowerFile::Fd(sys::reopen(fd, flags)?)),
            (Lower::Git(g), LowerNode::Git(n)) => Ok(match g.open_read(n, tmp_dir)? {
                GitFile::Mem(m) => LowerFile::Mem(m),
                GitFile::Fd(fd) => LowerFile::Fd(fd),
            }),
            _ => Err(err(libc::EIO)),
        }
    }

    /// Writes the content of a lower regular file into `out` (copy-up), holes kept.
    pub fn copy_data(&self, node: &LowerNode, st: &libc::stat64, out: &OwnedFd) -> io::Result<()> {
        match (self, node) {
            (Lower::Dir(_), LowerNode::Fd(fd)) => {
                let input = sys::reopen(fd, libc::O_RDONLY)?;
                copy_data(&input, out, st.st_size as u64)
            }
            (Lower::Git(g), LowerNode::Git(n)) => g.write_blob(&n.oid, out),
            _ => Err(err(libc::EIO)),
        }
    }
}
