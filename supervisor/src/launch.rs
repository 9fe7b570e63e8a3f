//! How `axctl run` hands an agent definition to the supervisor: `<state>/launch.json`.
//!
//! `axctl run` resolves the definition (docs/agents.md) and its secrets (docs/secrets.md;
//! a missing required secret is a usage error before anything starts), makes one netstack
//! placeholder per secret and renders the definition with them. The record
//! holds only what the guest may see: the argv, the environment and the native config files
//! with placeholders, the secret requirements and the policy. Real values never touch the
//! state directory: the supervisor resolves them again from the store or its environment
//! (inherited from `axctl run`) and merges them, with the placeholders, into the config it
//! pipes to ax-netstack ([`crate::netconf::net_fragment`]).
//!
//! The record's secret requirements ([`SecretReq`]) and egress policy ([`Policy`]) are the
//! shapes agent definitions declare them in (cli `agents::def` re-exports them).

use crate::secret::{Origin, ResolvedSecret};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// `<state>/launch.json`.
pub const FILE: &str = "launch.json";

/// A file to write into the guest before the agent starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub contents: String,
}

/// The rendered start of one agent (placeholders only, never a secret value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// The definition's name (`claude`, …).
    pub agent: String,
    /// The command agentd runs in `/workspace`.
    pub argv: Vec<String>,
    /// The agent process's environment on top of agentd's (the definition's `env`, each
    /// secret's variable = its placeholder).
    pub env: BTreeMap<String, String>,
    /// Written into the guest, in order, before the agent starts.
    pub files: Vec<GuestFile>,
    /// The definition's secret requirements (resolved again by the supervisor).
    pub secrets: Vec<SecretReq>,
    /// Secret name → the placeholder the guest got for it.
    pub placeholders: BTreeMap<String, String>,
    /// The definition's egress policy (a `--net-config` `[policy]` wins over it).
    pub policy: Option<Policy>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// Seconds.
    pub timeout_secs: Option<u64>,
}

impl LaunchRecord {
    /// Writes `<dir>/launch.json` (mode 0600: it names the placeholders).
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(FILE))
            .context("writing launch.json")?;
        f.write_all(&serde_json::to_vec_pretty(self)?)
            .context("writing launch.json")
    }

    /// Reads `<dir>/launch.json`; `None` for an agent started without one (an older axctl).
    pub fn load(dir: &Path) -> Result<Option<LaunchRecord>> {
        match std::fs::read(dir.join(FILE)) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).context("reading launch.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading launch.json"),
        }
    }

    /// The names of the secrets that come from the store (for `secrets::mark_used`).
    pub fn stored_names(resolved: &[ResolvedSecret]) -> Vec<&str> {
        resolved
            .iter()
            .filter(|r| r.origin == Origin::Stored)
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// A secret the agent needs: `{ name = "ANTHROPIC_API_KEY", hosts = ["api.anthropic.com"] }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretReq {
    /// Name in the secret store (`axctl secrets add NAME`) and in `axctl`'s environment.
    pub name: String,
    /// Hosts the agent needs it for (shown in listings and in the fix-it hint when it is
    /// missing). The hosts it is actually sent to are the store's binding (docs/secrets.md).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Environment variable in the guest holding the placeholder; default: `name`.
    #[serde(default)]
    pub env: Option<String>,
    /// A missing optional secret is skipped instead of failing the run.
    #[serde(default)]
    pub optional: bool,
    /// Also substitute in request bodies (netstack `body = true`).
    #[serde(default)]
    pub body: bool,
}

impl SecretReq {
    /// The guest environment variable: `env`, else `name`.
    pub fn env_var(&self) -> &str {
        self.env.as_deref().unwrap_or(&self.name)
    }
}

/// Egress policy, the same shape as the netstack's `[policy]` (netstack/src/config.rs), so the
/// supervisor can copy it into the netstack config as is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Action when no rule matches.
    #[serde(default = "Action::allow")]
    pub default: Action,
    /// Rules in order, `[[policy.rule]]`; the first match decides.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// What happens to a connection (netstack `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Intercept,
}

impl Action {
    fn allow() -> Action {
        Action::Allow
    }
}

/// One policy rule: `{ host = "*.github.com", ports = [443], action = "allow" }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Exact name, `*.suffix`, or `*`.
    pub host: HostPattern,
    /// Ports; empty: all.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub action: Action,
}

/// A policy host pattern: an exact host name, `*.suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct HostPattern(pub String);

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name = s.strip_prefix("*.").unwrap_or(&s);
        if s == "*" || valid_host(name) {
            Ok(HostPattern(s.to_ascii_lowercase()))
        } else {
            Err(serde::de::Error::custom(format!(
                "host {s:?} is not a host name, \"*.suffix\" or \"*\""
            )))
        }
    }
}

/// True for a DNS host name: labels of letters, digits and `-`, separated by dots (no
/// scheme, port, path or wildcard).
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The aux command that writes one guest file: `sh -c SCRIPT ax-write-file PATH MODE` with
/// the contents on its stdin (parent directories created, mode set in octal).
pub fn write_file_argv(f: &GuestFile) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1""#.into(),
        "ax-write-file".into(),
        f.path.clone(),
        format!("{:o}", f.mode),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_command_quotes_the_path() {
        let a = write_file_argv(&GuestFile {
            path: "/root/.claude/settings.json".into(),
            mode: 0o600,
            contents: String::new(),
        });
        assert_eq!(a[4], "/root/.claude/settings.json");
        assert_eq!(a[5], "600");
    }
}
