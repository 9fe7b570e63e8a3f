//! Metering and audit: usage parsed from provider responses (Anthropic Messages, OpenAI Chat
//! Completions and Responses, Gemini), priced from the price table, checked against the spend
//! cap, and recorded in the ledger; plus per-connection and per-request audit records.
//! SKELETON: filled in by the metering work.

use crate::config::Config;

/// Usage metering and the spend cap of one agent.
pub struct Meter {}

impl Meter {
    /// Loads the price table and opens the ledger. Errors: invalid price table, ledger not
    /// openable.
    pub fn open(config: &Config) -> anyhow::Result<Meter> {
        let _ = config;
        Ok(Meter {})
    }
}

/// The audit log of one agent.
pub struct Audit {}

impl Audit {
    /// Opens the audit log (the ledger database). Errors: not openable.
    pub fn open(config: &Config) -> anyhow::Result<Audit> {
        let _ = config;
        Ok(Audit {})
    }
}
