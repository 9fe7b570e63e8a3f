//! ax-fsd: vhost-user-fs backend with a copy-on-write layer (issue #4)
//!
//! Placeholder crate: filled by its issue.
