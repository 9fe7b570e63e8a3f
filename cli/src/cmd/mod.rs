//! One module per `axctl` command family.

pub mod attach;
pub mod branch;
pub mod lifecycle;
pub mod logs;
pub mod ps;
pub mod run;
