//! One module per `axctl` command family.

pub mod accounts;
pub mod agents;
pub mod attach;
pub mod audit;
pub mod branch;
pub mod cost;
pub mod git;
pub mod image;
pub mod lifecycle;
pub mod logs;
pub mod ps;
pub mod run;
pub mod secrets;
pub mod supervise;
