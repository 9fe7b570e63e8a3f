//! Egress policy: allow / deny / intercept by host name, port and address (docs/network.md,
//! "Policy").
//!
//! Order of decision for a connection to `host` (the name the guest resolved through our DNS,
//! if any), `ip`, `port`:
//! 1. the first `[[policy.rule]]` that matches decides. A rule's `host` is an exact name,
//!    `*.suffix` (any subdomain, not the suffix itself), `*` (everything), an IP address or a
//!    CIDR (`10.0.0.0/8`); names match flows that carry a name, addresses match flows to a
//!    literal address (no DNS name); `ports` empty means every port;
//! 2. else, to port 443 of a host a secret is bound to or of a known LLM API: intercept;
//! 3. else `policy.default`.

use crate::config::{Action, Config};
use std::net::IpAddr;

/// LLM API hosts intercepted by default (metering, secret substitution).
pub const LLM_HOSTS: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "chatgpt.com",
];

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

impl Decision {
    /// `"allow"`, `"intercept"` or `"deny"` (audit records).
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Intercept => "intercept",
            Decision::Deny(_) => "deny",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    /// `.suffix` including the dot.
    Suffix(String),
    Net(IpAddr, u8),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    pattern: Pattern,
    ports: Vec<u16>,
    action: Action,
    /// 1-based index and the rule as written (deny reasons).
    text: String,
}

/// The compiled policy of one agent.
pub struct Policy {
    rules: Vec<CompiledRule>,
    intercepted: Vec<String>,
    default: Action,
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn compile(host: &str) -> Pattern {
    let h = normalize(host.trim());
    if h == "*" {
        return Pattern::Any;
    }
    if let Some(s) = h.strip_prefix("*.") {
        return Pattern::Suffix(format!(".{s}"));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Pattern::Net(ip, if ip.is_ipv4() { 32 } else { 128 });
    }
    if let Some((a, l)) = h.split_once('/') {
        if let (Ok(ip), Ok(len)) = (a.parse::<IpAddr>(), l.parse::<u8>()) {
            return Pattern::Net(ip, len);
        }
    }
    Pattern::Exact(h)
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.min(32) as u32;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = len.min(128) as u32;
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl CompiledRule {
    fn matches(&self, host: Option<&str>, ip: IpAddr, port: u16) -> bool {
        if !self.ports.is_empty() && !self.ports.contains(&port) {
            return false;
        }
        match (&self.pattern, host) {
            (Pattern::Any, _) => true,
            (Pattern::Exact(e), Some(h)) => e == h,
            (Pattern::Suffix(s), Some(h)) => h.ends_with(s.as_str()),
            (Pattern::Net(n, len), None) => in_net(ip, *n, *len),
            _ => false,
        }
    }
}

impl Policy {
    /// Compiles `config.policy` (+ secrets' hosts and known LLM API hosts → intercept).
    pub fn new(config: &Config) -> Policy {
        let rules = config
            .policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| CompiledRule {
                pattern: compile(&r.host),
                ports: r.ports.clone(),
                action: r.action,
                text: if r.ports.is_empty() {
                    format!("policy rule {} (host {:?})", i + 1, r.host)
                } else {
                    format!(
                        "policy rule {} (host {:?}, ports {:?})",
                        i + 1,
                        r.host,
                        r.ports
                    )
                },
            })
            .collect();
        let mut intercepted: Vec<String> = LLM_HOSTS.iter().map(|h| h.to_string()).collect();
        for s in &config.secrets {
            intercepted.extend(s.hosts.iter().map(|h| normalize(h)));
        }
        intercepted.sort();
        intercepted.dedup();
        Policy {
            rules,
            intercepted,
            default: config.policy.default,
        }
    }

    /// Decides a connection to `ip:port`, reached by `host` when the guest used our DNS
    /// (then `ip` is the synthetic address and only name rules apply).
    pub fn decide(&self, host: Option<&str>, ip: IpAddr, port: u16) -> Decision {
        let host = host.map(normalize);
        let host = host.as_deref();
        for r in &self.rules {
            if r.matches(host, ip, port) {
                return match r.action {
                    Action::Allow => Decision::Allow,
                    Action::Intercept => Decision::Intercept,
                    Action::Deny => Decision::Deny(format!("denied by {}", r.text)),
                };
            }
        }
        if let Some(h) = host {
            if port == 443
                && self
                    .intercepted
                    .binary_search_by(|x| x.as_str().cmp(h))
                    .is_ok()
            {
                return Decision::Intercept;
            }
        }
        match self.default {
            Action::Allow => Decision::Allow,
            Action::Intercept => Decision::Intercept,
            Action::Deny => {
                Decision::Deny("denied by the default policy (policy.default = \"deny\")".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::new(&Config::parse(&format!("agent='a'\n{text}"), "t").unwrap())
    }

    const ANY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 9));

    #[test]
    fn first_match_wins_with_ports_and_suffixes() {
        let p = policy(
            r#"
[policy]
default = "deny"
[[policy.rule]]
host = "bad.example.com"
action = "deny"
[[policy.rule]]
host = "*.example.com"
ports = [443]
action = "allow"
[[policy.rule]]
host = "10.0.0.0/8"
action = "allow"
"#,
        );
        assert!(
            matches!(p.decide(Some("bad.example.com"), ANY, 443), Decision::Deny(r) if r.contains("rule 1"))
        );
        assert_eq!(
            p.decide(Some("Www.Example.com."), ANY, 443),
            Decision::Allow
        );
        assert!(
            matches!(p.decide(Some("www.example.com"), ANY, 80), Decision::Deny(r) if r.contains("default"))
        );
        // "*.suffix" does not match the suffix itself
        assert!(matches!(
            p.decide(Some("example.com"), ANY, 443),
            Decision::Deny(_)
        ));
        // address rules match literal-address flows only
        assert_eq!(
            p.decide(None, "10.2.3.4".parse().unwrap(), 22),
            Decision::Allow
        );
        assert!(matches!(
            p.decide(None, "11.2.3.4".parse().unwrap(), 22),
            Decision::Deny(_)
        ));
        // known LLM hosts are intercepted on 443 even with default deny
        assert_eq!(
            p.decide(Some("api.anthropic.com"), ANY, 443),
            Decision::Intercept
        );
    }

    #[test]
    fn secrets_hosts_intercepted_unless_a_rule_says_otherwise() {
        let p = policy(
            r#"
[[policy.rule]]
host = "api.openai.com"
action = "allow"
[[secret]]
name = "GH"
value = "ghp_real"
placeholder = "ph"
hosts = ["GitHub.com"]
"#,
        );
        assert_eq!(p.decide(Some("github.com"), ANY, 443), Decision::Intercept);
        assert_eq!(p.decide(Some("github.com"), ANY, 22), Decision::Allow);
        assert_eq!(p.decide(Some("api.openai.com"), ANY, 443), Decision::Allow);
        assert_eq!(p.decide(Some("example.org"), ANY, 443), Decision::Allow);
    }
}
