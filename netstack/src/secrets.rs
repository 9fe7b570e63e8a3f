//! Secrets: placeholders the guest holds, substitution into requests bound for a secret's
//! hosts, blocking of placeholders sent elsewhere, scrubbing of real values out of responses.
//! SKELETON: filled in by the TLS/secrets work.

use crate::config;

/// The placeholder ↔ value tables of one agent.
pub struct Secrets {
    entries: Vec<config::Secret>,
}

impl Secrets {
    /// Builds the tables from the config's `[[secret]]`s.
    pub fn new(secrets: &[config::Secret]) -> Secrets {
        Secrets {
            entries: secrets.to_vec(),
        }
    }

    /// Host names any secret is bound to (these are intercepted by default).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().flat_map(|s| s.hosts.iter().map(String::as_str))
    }
}
