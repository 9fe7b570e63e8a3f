//! ax-vmm: the KVM microVM monitor (issue #3)
//!
//! Placeholder crate: filled by its issue.

pub mod acpi;
