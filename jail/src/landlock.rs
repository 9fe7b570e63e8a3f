//! The outcome of a Landlock ruleset (Documentation/userspace-api/landlock.rst), for the
//! jails' log lines. The rulesets themselves differ per process (ax-vmm: no path at all;
//! ax-fsd: its layers; ax-netstack: its ledger and the resolver's files), so they are built
//! by each jail with the `landlock` crate.

use ::landlock::{LandlockStatus, RestrictionStatus, RulesetStatus};

/// What was enforced.
#[derive(Debug)]
pub struct LandlockOutcome {
    /// Fully, partially (older ABI) or not enforced.
    pub status: RulesetStatus,
    /// The kernel's Landlock ABI as the crate sees it (None: not available).
    pub abi: Option<i32>,
}

impl From<RestrictionStatus> for LandlockOutcome {
    fn from(st: RestrictionStatus) -> Self {
        let abi = match st.landlock {
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => Some(kernel_abi.unwrap_or(effective_abi as i32)),
            _ => None,
        };
        LandlockOutcome {
            status: st.ruleset,
            abi,
        }
    }
}

impl std::fmt::Display for LandlockOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.status {
            RulesetStatus::FullyEnforced => "fully enforced",
            RulesetStatus::PartiallyEnforced => {
                "enforced up to this kernel's ABI (newer rights unavailable)"
            }
            RulesetStatus::NotEnforced => "NOT enforced (kernel without Landlock)",
        };
        match self.abi {
            Some(abi) => write!(f, "landlock ABI {abi}: {what}"),
            None => write!(f, "landlock unavailable: {what}"),
        }
    }
}
