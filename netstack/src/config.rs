//! The per-agent netstack config: TOML, written by the supervisor and piped to
//! `ax-netstack --config -` on stdin (it holds secret values, so it never touches the disk).
//! Format reference with examples: `docs/network.md`.
//!
//! ```toml
//! agent = "fix-flaky"                    # agent name (ledger, audit, log lines)
//!
//! [network]                              # all optional; defaults shown
//! guest = "100.96.0.2"                   # guest eth0 address (agentd configures it)
//! gateway = "100.96.0.1"                 # the stack's own address: gateway and DNS server
//! prefix_len = 30
//! mtu = 1500
//! upstream_proxy = "http://proxy.corp:3128"   # optional HTTP CONNECT proxy for every upstream
//! max_connections = 2048                 # guest TCP connections at once (DNS/TCP included)
//!
//! [[route]]                              # host routing override (operator choice)
//! host = "api.anthropic.com"
//! address = "127.0.0.1:8443"             # IP or IP:port (port defaults to the guest's port)
//! ca_pem = "-----BEGIN CERTIFICATE-----…"  # extra CA(s) to trust for this host (or ca_file)
//!
//! [policy]
//! default = "allow"                      # allow | deny | intercept
//! [[policy.rule]]
//! host = "*.example.com"                 # exact name, "*.suffix", "*", IP or CIDR
//! ports = [443]                          # empty or absent: any port
//! action = "deny"
//!
//! [[secret]]
//! name = "ANTHROPIC_API_KEY"
//! value = "sk-ant-…"                     # the real value: never leaves this process
//! placeholder = "…"                      # what the guest holds instead (secrets.rs format)
//! hosts = ["api.anthropic.com"]
//! body = false                           # also substitute in request bodies (opt-in)
//!
//! [limits]
//! max_usd = 5.0                          # spend cap; optional
//! max_tokens = 2000000                   # token cap (all kinds); optional
//!
//! [meter]
//! ledger = "/home/u/.local/state/ax/ledger.sqlite"   # ledger + audit database; optional
//! prices = "/home/u/.config/ax/prices.toml"          # overrides the shipped price table
//! unknown_model = "highest"              # or "refuse", "zero" (docs/metering.md)
//! max_audit_rows = 100000                # request/connection audit rows kept per agent
//! ```

use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// A config that could not be read or is invalid. The message names the origin (file or
/// `stdin`), the line and column where known, and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// Where the text came from (a path, or `stdin`).
    pub origin: String,
    /// What is wrong, with `line N, column M` when the TOML parser knows it.
    pub message: String,
}

/// One agent's netstack config (top level of the TOML document).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The agent's name, as in `axctl ps`.
    pub agent: String,
    /// Addresses of the guest link.
    #[serde(default)]
    pub network: Network,
    /// Host routing overrides, `[[route]]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// Egress policy.
    #[serde(default)]
    pub policy: Policy,
    /// Secrets and the hosts they are bound to, `[[secret]]`.
    #[serde(default, rename = "secret")]
    pub secrets: Vec<Secret>,
    /// Spend caps.
    #[serde(default)]
    pub limits: Limits,
    /// Where metering and audit records go.
    #[serde(default)]
    pub meter: MeterConfig,
}

/// The guest link: a point-to-point IPv4 subnet between the guest's eth0 and the stack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// The guest's address (agentd puts it on eth0).
    pub guest: Ipv4Addr,
    /// The stack's address: default gateway and DNS server of the guest.
    pub gateway: Ipv4Addr,
    /// Prefix length of the link subnet (1..=30).
    pub prefix_len: u8,
    /// Link MTU in bytes (IP packet, without the Ethernet header), 576..=9000.
    pub mtu: u16,
    /// Optional HTTP proxy (`http://host:port`) through which every upstream connection is
    /// made with `CONNECT` (RFC 9110 §9.3.6), for hosts without direct egress.
    pub upstream_proxy: Option<String>,
    /// Guest TCP connections held at once (each holds 512 KiB of buffers), DNS over TCP to
    /// the gateway included; more are refused (RST). 1..=65535, default 2048.
    pub max_connections: usize,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            guest: Ipv4Addr::new(100, 96, 0, 2),
            gateway: Ipv4Addr::new(100, 96, 0, 1),
            prefix_len: 30,
            mtu: 1500,
            upstream_proxy: None,
            max_connections: 2048,
        }
    }
}

/// A host routing override: connections to `host` go to `address` instead of what DNS says,
/// and the upstream TLS certificate may also be signed by the extra CAs given here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Exact host name (case-insensitive).
    pub host: String,
    /// `IP` or `IP:port`; without a port, the port the guest connected to is kept.
    pub address: String,
    /// Extra CA certificates (PEM) to trust for this host's upstream.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Extra CA certificates (PEM file, read at startup before the jail).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// What happens to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Proxied to the destination untouched (TLS passes through).
    Allow,
    /// Refused: the guest sees a refused connection (RST), DNS still answers.
    Deny,
    /// TLS terminated with the agent's CA; HTTP is inspected, secrets swapped, usage metered.
    Intercept,
}

/// Egress policy: the first matching rule decides, else `default`. Hosts that carry a secret
/// or are a known LLM API are intercepted unless a rule says otherwise (docs/network.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Action when no rule matches.
    pub default: Action,
    /// Rules in order, `[[policy.rule]]`.
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Allow,
            rules: Vec::new(),
        }
    }
}

/// One policy rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Exact name, `*.suffix` (any subdomain, not the suffix itself), `*`, an IP address or
    /// a CIDR (`10.0.0.0/8`, `2001:db8::/32`). Names must be host names
    /// (`hostname::normalize`); CIDR rules also apply to the addresses names resolve to.
    pub host: String,
    /// Ports this rule applies to; empty: all.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// What to do.
    pub action: Action,
}

/// A secret: the guest only ever holds `placeholder`; the stack puts `value` in requests to
/// `hosts` (Authorization and x-api-key headers; bodies when `body`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// Name, e.g. the environment variable (`ANTHROPIC_API_KEY`).
    pub name: String,
    /// The real value.
    pub value: String,
    /// The opaque stand-in the guest sees (format: `secrets::placeholder`).
    pub placeholder: String,
    /// Exact host names this secret may be sent to.
    pub hosts: Vec<String>,
    /// Also substitute in request bodies.
    #[serde(default)]
    pub body: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .field("body", &self.body)
            .finish()
    }
}

/// Spend caps for one agent; `None`: no cap.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Cap on the summed cost of LLM calls, USD.
    pub max_usd: Option<f64>,
    /// Cap on the summed tokens of LLM calls (input + output + cache read + cache write).
    pub max_tokens: Option<u64>,
}

/// Where metering goes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// SQLite database holding the ledger and the audit log (shared by all agents);
    /// none: records are only logged.
    pub ledger: Option<PathBuf>,
    /// Price table overriding the shipped one (TOML, `meter::prices`).
    pub prices: Option<PathBuf>,
    /// How a model the price table does not know is charged (docs/metering.md, "Unknown
    /// models"); default [`UnknownModel::Highest`].
    #[serde(default)]
    pub unknown_model: UnknownModel,
    /// Most request audit rows kept per agent in the ledger (older ones are deleted as new
    /// ones come); default [`MeterConfig::DEFAULT_AUDIT_ROWS`].
    pub max_audit_rows: Option<u64>,
}

impl MeterConfig {
    /// The default of `max_audit_rows`: 100,000 request rows (and as many connection rows)
    /// per agent, about 20 MB of ledger.
    pub const DEFAULT_AUDIT_ROWS: u64 = 100_000;
}

/// `[meter] unknown_model`: the price of a call whose model the price table does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownModel {
    /// Each kind of token at the highest price of any model of the same vendor in the table
    /// (fail-closed: a capped agent is never under-charged).
    #[default]
    Highest,
    /// Refused with 403 before it is forwarded when the request names an unknown model (a
    /// response naming one is then charged as `highest`).
    Refuse,
    /// Cost 0, recorded with `priced = false` and a warning (only when set explicitly).
    Zero,
}

impl Config {
    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            origin: origin.to_string(),
            message,
        };
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    err(format!("line {line}, column {col}: {msg}"))
                }
                None => err(msg),
            }
        })?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.network;
        if !(1..=30).contains(&n.prefix_len) {
            return Err(format!(
                "network.prefix_len = {} is out of range; use 1..=30",
                n.prefix_len
            ));
        }
        let mask = u32::MAX << (32 - n.prefix_len);
        if u32::from(n.guest) & mask != u32::from(n.gateway) & mask || n.guest == n.gateway {
            return Err(format!(
                "network.guest {} and network.gateway {} must be two addresses of one /{} subnet",
                n.guest, n.gateway, n.prefix_len
            ));
        }
        if !(576..=9000).contains(&n.mtu) {
            return Err(format!(
                "network.mtu = {} is out of range; use 576..=9000",
                n.mtu
            ));
        }
        if !(1..=65535).contains(&n.max_connections) {
            return Err(format!(
                "network.max_connections = {} is out of range; use 1..=65535",
                n.max_connections
            ));
        }
        if let Some(p) = &n.upstream_proxy {
            if !p.starts_with("http://") {
                return Err(format!(
                    "network.upstream_proxy = {p:?}: only http://host:port proxies are supported"
                ));
            }
        }
        for r in &self.routes {
            if r.host.is_empty() || r.address.is_empty() {
                return Err("every [[route]] needs host and address".into());
            }
            if r.address.parse::<std::net::SocketAddr>().is_err()
                && r.address.parse::<std::net::IpAddr>().is_err()
            {
                return Err(format!(
                    "route for {}: address {:?} is not an IP or IP:port",
                    r.host, r.address
                ));
            }
        }
        for r in &self.routes {
            crate::hostname::normalize(&r.host).map_err(|e| {
                format!("route host {e}; give an exact name such as \"api.example.com\"")
            })?;
        }
        for (i, r) in self.policy.rules.iter().enumerate() {
            crate::hostname::check_rule_host(&r.host).map_err(|e| {
                format!(
                    "policy rule {}: host {e}; use an exact name, \"*.suffix\", \"*\", an IP or a CIDR",
                    i + 1
                )
            })?;
        }
        for s in &self.secrets {
            for h in &s.hosts {
                crate::hostname::normalize(h)
                    .map_err(|e| format!("secret {}: host {e}; give exact host names", s.name))?;
            }
        }
        for s in &self.secrets {
            if s.name.is_empty() || s.value.is_empty() || s.placeholder.is_empty() {
                return Err("every [[secret]] needs name, value and placeholder".into());
            }
            if s.hosts.is_empty() {
                return Err(format!(
                    "secret {}: bind it to at least one host (hosts = [\"api.example.com\"])",
                    s.name
                ));
            }
            if s.value.contains(&s.placeholder) || s.placeholder.contains(&s.value) {
                return Err(format!(
                    "secret {}: placeholder and value must not contain each other",
                    s.name
                ));
            }
        }
        if let Some(usd) = self.limits.max_usd {
            if !(usd.is_finite() && usd >= 0.0) {
                return Err(format!(
                    "limits.max_usd = {usd} must be a non-negative number"
                ));
            }
        }
        Ok(())
    }
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("agent = \"a1\"\n", "t").unwrap();
        assert_eq!(c.agent, "a1");
        assert_eq!(c.network.guest, Ipv4Addr::new(100, 96, 0, 2));
        assert_eq!(c.policy.default, Action::Allow);
        assert!(c.secrets.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
agent = "x"
[network]
upstream_proxy = "http://10.1.2.3:3128"
[[route]]
host = "api.anthropic.com"
address = "127.0.0.1:8443"
[policy]
default = "deny"
[[policy.rule]]
host = "*.github.com"
ports = [443]
action = "allow"
[[secret]]
name = "K"
value = "real"
placeholder = "ph"
hosts = ["api.anthropic.com"]
[limits]
max_usd = 1.5
"#;
        let c = Config::parse(text, "t").unwrap();
        assert_eq!(c.routes[0].address, "127.0.0.1:8443");
        assert_eq!(c.policy.rules[0].action, Action::Allow);
        assert_eq!(c.limits.max_usd, Some(1.5));
        assert!(!format!("{:?}", c.secrets[0]).contains("real"));
    }

    #[test]
    fn unknown_key_names_line() {
        let e = Config::parse("agent = \"a\"\n[policy]\ndefualt = \"deny\"\n", "cfg.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cfg.toml: line 3"), "{e}");
        assert!(e.contains("defualt"), "{e}");
    }

    #[test]
    fn invalid_values_are_refused() {
        for (text, want) in [
            ("agent=\"a\"\n[network]\nprefix_len = 31\n", "prefix_len"),
            (
                "agent=\"a\"\n[network]\ngateway = \"10.0.0.1\"\n",
                "one /30 subnet",
            ),
            (
                "agent=\"a\"\n[[route]]\nhost=\"h\"\naddress=\"nope\"\n",
                "not an IP",
            ),
            (
                "agent=\"a\"\n[[secret]]\nname=\"K\"\nvalue=\"v\"\nplaceholder=\"p\"\nhosts=[]\n",
                "at least one host",
            ),
            (
                "agent=\"a\"\n[[policy.rule]]\nhost=\"exampl\\\\101.com\"\naction=\"deny\"\n",
                "policy rule 1: host \"exampl\\\\101.com\" is not a host name",
            ),
            (
                "agent=\"a\"\n[[policy.rule]]\nhost=\"10.0.0.0/33\"\naction=\"deny\"\n",
                "policy rule 1",
            ),
            (
                "agent=\"a\"\n[[route]]\nhost=\"a b\"\naddress=\"127.0.0.1\"\n",
                "route host \"a b\" is not a host name",
            ),
        ] {
            let e = Config::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
