//! A secret resolved for one agent: its real value (from the secret store or `axctl`'s
//! environment, docs/secrets.md) with the hosts it is bound to, as the supervisor hands it to
//! ax-netstack. Values never reach the state dir; `Debug` masks them.

use serde::Serialize;

/// A masked value for display: a recognisable lowercase prefix such as `sk-ant-` or `ghp_`
/// (only when the value is at least 16 characters), `…`, and the last 4 characters (only
/// when the value is at least 16 characters; shorter values show nothing of themselves).
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 16 {
        return "…".into();
    }
    // Leading segments of lowercase letters each ending in '-' or '_', at most 12 chars.
    let mut prefix_len = 0;
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        while i < chars.len() && chars[i].is_ascii_lowercase() {
            i += 1;
        }
        if i == start || i >= chars.len() || !(chars[i] == '-' || chars[i] == '_') || i + 1 > 12 {
            break;
        }
        i += 1;
        prefix_len = i;
    }
    let prefix: String = chars[..prefix_len].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// Where a resolved secret's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The store.
    Stored,
    /// `axctl`'s environment (well-known names only).
    Environment,
}

/// A secret ready for the netstack's `[[secret]]`: name, real value, bound hosts, body flag,
/// plus the guest variable that holds its placeholder.
#[derive(Clone)]
pub struct ResolvedSecret {
    pub name: String,
    pub value: String,
    pub hosts: Vec<String>,
    pub body: bool,
    /// The guest environment variable (the requirement's `env`).
    pub env: String,
    pub origin: Origin,
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret")
            .field("name", &self.name)
            .field("value", &mask(&self.value))
            .field("hosts", &self.hosts)
            .field("body", &self.body)
            .field("env", &self.env)
            .field("origin", &self.origin)
            .finish()
    }
}
