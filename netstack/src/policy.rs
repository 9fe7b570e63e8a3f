//! Egress policy: allow / deny / intercept by host name, port and address (docs/network.md).
//! SKELETON: filled in by the netstack-stack work.

use crate::config::{Action, Config};
use std::net::IpAddr;

/// The decision for one connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Proxy untouched.
    Allow,
    /// Terminate TLS, inspect HTTP.
    Intercept,
    /// Refuse; the reason goes to the log and the audit record.
    Deny(String),
}

/// The compiled policy of one agent.
pub struct Policy {
    default: Action,
}

impl Policy {
    /// Compiles `config.policy` (+ secrets' hosts and known LLM API hosts → intercept).
    pub fn new(config: &Config) -> Policy {
        Policy {
            default: config.policy.default,
        }
    }

    /// Decides a connection to `ip:port`, reached by `host` when the guest used our DNS.
    pub fn decide(&self, host: Option<&str>, ip: IpAddr, port: u16) -> Decision {
        let _ = (host, ip, port);
        match self.default {
            Action::Allow => Decision::Allow,
            Action::Intercept => Decision::Intercept,
            Action::Deny => Decision::Deny("default policy".into()),
        }
    }
}
