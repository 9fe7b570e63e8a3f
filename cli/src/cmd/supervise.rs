//! `axctl __supervise NAME [--attached]` (hidden): the per-agent supervisor process
//! (ax-supervisor), given the secret store and the config as its [`ax_supervisor::Host`].

use anyhow::Result;
use ax_supervisor::launch::SecretReq;
use ax_supervisor::secret::ResolvedSecret;

/// The command line's side of the supervisor: secrets from the store (or the environment for
/// the well-known names), identities from the config file.
pub struct CliHost;

impl ax_supervisor::Host for CliHost {
    fn resolve_secrets(&self, reqs: &[SecretReq]) -> Result<Vec<ResolvedSecret>> {
        crate::secrets::resolve(reqs)
    }

    fn mark_used(&self, names: &[&str]) -> Result<()> {
        crate::secrets::mark_used(names)
    }

    fn default_identity(&self, name: &str) -> Result<ax_branch::Identity> {
        crate::config::load()?.branch.identity(name)
    }
}

/// Runs the supervisor of agent `name`; returns its exit code.
pub fn run(name: &str, attached: bool) -> Result<i32> {
    ax_supervisor::run(name, attached, &CliHost)
}
