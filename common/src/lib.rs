//! ax-common: what every host-side ax crate shares.
//!
//! - [`error`]: the error type that maps to the CLI's exit codes (2 usage/config, 1 runtime)
//!   and carries a "how to fix it" hint.
//! - [`paths`]: where ax keeps things (XDG cache/state/config dirs, the ledger, helper
//!   binaries shipped beside `axctl`).
//! - [`host`]: host facts measured once (the TSC rate handed to TCG guests).
//! - [`quote`]: git's C-style quoting of file names the guest chose, for printing.
//! - [`testing`]: skip-or-fail for tests whose prerequisite is missing (`AX_TEST_REQUIRE_VM`).

pub mod error;
pub mod host;
pub mod paths;
pub mod quote;
pub mod testing;
