//! The FUSE protocol (include/uapi/linux/fuse.h) as carried by virtio-fs (virtio 1.2 §5.11):
//! the ABI structs, the [`FileSystem`](filesystem::FileSystem) trait, and the request
//! [`Server`](server::Server).

pub mod abi;
pub mod filesystem;
pub mod io;
pub mod server;
