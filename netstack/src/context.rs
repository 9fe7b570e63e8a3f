//! The shared state of one agent's netstack, built once at startup (before the jail: it reads
//! CA files and opens the ledger) and shared by every flow.

use crate::config::Config;
use crate::{ca, meter, policy, secrets, upstream};
use std::sync::Arc;

/// Everything a flow needs to be decided, connected, intercepted and metered.
pub struct Context {
    /// The config this netstack was started with.
    pub config: Config,
    /// Egress decisions.
    pub policy: policy::Policy,
    /// Upstream connections (routes, blocked ranges, CONNECT proxy, extra CAs).
    pub upstream: upstream::Connector,
    /// The agent's CA and the leaf certificates minted from it.
    pub ca: ca::Ca,
    /// Placeholder ↔ value tables.
    pub secrets: secrets::Secrets,
    /// Usage metering, prices, spend cap, ledger.
    pub meter: meter::Meter,
    /// Per-connection and per-request audit records.
    pub audit: meter::Audit,
}

impl Context {
    /// Builds the context from a validated config.
    ///
    /// Errors: unreadable CA files, an unusable price table or ledger database.
    pub fn new(config: Config) -> anyhow::Result<Arc<Context>> {
        Context::with_resolver(config, Arc::new(upstream::host_lookup))
    }

    /// [`Context::new`] with names looked up by `resolver` instead of the host's getaddrinfo
    /// (the DNS responder and the upstream connect both use it; tests record the lookups).
    pub fn with_resolver(
        config: Config,
        resolver: upstream::Resolver,
    ) -> anyhow::Result<Arc<Context>> {
        let policy = policy::Policy::new(&config);
        let upstream = upstream::Connector::new(&config)?.with_resolver(resolver);
        let ca = ca::Ca::generate(&config.agent)?;
        let secrets = secrets::Secrets::new(&config.secrets);
        let meter = meter::Meter::open(&config)?;
        let audit = meter::Audit::open(&config)?;
        Ok(Arc::new(Context {
            config,
            policy,
            upstream,
            ca,
            secrets,
            meter,
            audit,
        }))
    }
}
