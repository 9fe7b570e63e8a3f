//! ax-fsd: the repository over virtio-fs with a copy-on-write layer.
//!
//! - [`fuse`]: the FUSE kernel ABI (include/uapi/linux/fuse.h) and a transport-independent
//!   request server dispatching to a [`fuse::filesystem::FileSystem`].
//! - [`union`]: the file system: a read-only lower directory under a per-agent upper directory
//!   in overlayfs's on-disk format (Documentation/filesystems/overlayfs.rst).
//! - [`overlay`]: overlayfs's on-disk rules for whiteouts and opaque directories, for the union
//!   and for any other reader of an upper layer.
//! - [`journal`]: the live set of paths the agent created, modified or deleted.
//! - [`jail`]: what the process may still do once serving (Landlock, seccomp, capabilities,
//!   namespaces; docs/jail.md).
//! - [`vhost_user`]: the vhost-user-fs backend (vhost-user spec; virtio 1.2 §5.11) that carries
//!   FUSE requests from the guest's virtqueues to the server.
//!
//! The wire and on-disk formats are described in docs/fsd.md.

pub mod fuse;
pub mod jail;
pub mod journal;
pub mod overlay;
pub mod union;
pub mod vhost_user;
