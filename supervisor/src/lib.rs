//! ax-supervisor: one agent's life on the host, from boot to branch.
//!
//! `axctl run` prepares an agent's state directory (docs/state.md) and starts the supervisor as
//! a detached process (`axctl __supervise NAME`); from then on this crate owns the agent:
//!
//! - [`supervise`]: the supervisor process itself (vsock backend, ax-fsd, ax-netstack, the VMM,
//!   agentd's control channel, output, signals, timeout, teardown, the branch at the end).
//! - [`driver`]: the VM drivers, ax-vmm ([`driver::axvmm`]) and QEMU ([`driver::qemu`]), and the
//!   choice between them.
//! - [`netconf`]: the netstack config piped to ax-netstack (`net.json`, `--net-config`, the
//!   agent's secrets and policy).
//! - [`launch`]: `launch.json`, the rendered agent start (argv, env, guest files, secret
//!   requirements, policy) that `axctl run` hands over.
//! - [`secret`]: a secret resolved for one agent (value, bound hosts), masked in `Debug`.
//! - [`state`]: `state.json` and the agents' state directories; the branch built from one.
//! - [`client`]: the host side of the control protocol (docs/protocol.md) over hybrid vsock.
//!
//! What the supervisor needs from `axctl`'s own configuration (the secret store, the config
//! file's commit identity) comes through the [`Host`] trait, so this crate sits below the
//! command line: cli → supervisor → {image, branch, fsd/netstack/vsock, agentd::proto}.

// The error and path helpers every ax crate shares, under their usual names.
pub(crate) use ax_common::{error, paths};

pub mod client;
pub mod driver;
pub mod launch;
pub mod netconf;
pub mod secret;
pub mod state;
pub mod supervise;

pub use supervise::{run, STOP_GRACE};

/// What the supervisor asks of the command line that started it: the values of the agent's
/// secrets and the commit identity configured for it. `axctl` implements it with its secret
/// store (docs/secrets.md) and config file (docs/config.md).
pub trait Host {
    /// Resolves `reqs` to values: the store's first, then the process environment for the
    /// well-known names. Errors: a required secret that is neither (usage, exit 2, naming
    /// `axctl secrets add`), an unreadable store.
    fn resolve_secrets(
        &self,
        reqs: &[launch::SecretReq],
    ) -> anyhow::Result<Vec<secret::ResolvedSecret>>;
    /// Records that the stored secrets `names` were used now (their `last_used`).
    fn mark_used(&self, names: &[&str]) -> anyhow::Result<()>;
    /// The commit identity of agent `name` from the current config, for agents whose state
    /// predates the identity recorded at `run`. Errors: a bad `[branch]` config (usage).
    fn default_identity(&self, name: &str) -> anyhow::Result<ax_branch::Identity>;
}
