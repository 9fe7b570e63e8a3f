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
//!
//! Names are compared in their normal form ([`crate::hostname::normalize`]); a name that has
//! none (escapes, spaces, control bytes, …) is denied. A flow that carries a name is decided
//! by name; the addresses the name resolves to on the host then pass the address rules too
//! ([`Policy::address_denied`], applied by the upstream connect): an address an IP/CIDR rule
//! denies is never connected to, whatever the name rules said ("deny wins"); allowing IP/CIDR
//! rules never allow a name. [`Policy::name_denied`] tells the DNS responder which names are
//! denied on every port, so that it answers them without asking the host's resolver.

use crate::config::{Action, Config};
use crate::hostname;
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

/// A compiled rule `host`.
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
    hostname::normalize(host).unwrap_or_else(|_| host.trim_end_matches('.').to_ascii_lowercase())
}

/// A rule's `host` as a pattern. Errors: a name pattern that is not a host name (the config
/// check reports it, naming the rule).
fn pattern(host: &str) -> Result<Pattern, hostname::InvalidName> {
    let h = host.trim();
    if h == "*" {
        return Ok(Pattern::Any);
    }
    if let Some(s) = h.strip_prefix("*.") {
        return Ok(Pattern::Suffix(format!(".{}", hostname::normalize(s)?)));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Pattern::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    if let Some((a, l)) = h.split_once('/') {
        if let (Ok(ip), Ok(len)) = (a.parse::<IpAddr>(), l.parse::<u8>()) {
            if len <= if ip.is_ipv4() { 32 } else { 128 } {
                return Ok(Pattern::Net(ip, len));
            }
        }
    }
    Ok(Pattern::Exact(hostname::normalize(h)?))
}

fn compile(host: &str) -> Pattern {
    // Config::parse refused invalid patterns; one that slipped through matches no name.
    pattern(host).unwrap_or_else(|_| Pattern::Exact(String::new()))
}

/// Is `ip` in `net`/`len`? Families never match each other (an IPv4 rule does not match a
/// v4-mapped IPv6 address: the upstream connect unmaps those first).
pub fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
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
    /// (then `ip` is the synthetic address and only name rules apply). A `host` without a
    /// normal form ([`hostname::normalize`]) is denied.
    pub fn decide(&self, host: Option<&str>, ip: IpAddr, port: u16) -> Decision {
        let host = match host.map(hostname::normalize).transpose() {
            Ok(h) => h,
            Err(e) => return Decision::Deny(format!("denied: {e}")),
        };
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
            Action::Deny => Decision::Deny(DEFAULT_DENY.into()),
        }
    }

    /// Is the (normalised) `name` denied on every port? Then the reason, as [`Policy::decide`]
    /// would give it for a port no rule names. The DNS responder answers such names without
    /// asking the host's resolver (no query for a denied name leaves the host). None when some
    /// port may be allowed or intercepted (a rule with `ports`, the intercepted hosts on 443).
    pub fn name_denied(&self, name: &str) -> Option<String> {
        for r in &self.rules {
            let hit = match &r.pattern {
                Pattern::Any => true,
                Pattern::Exact(e) => e == name,
                Pattern::Suffix(s) => name.ends_with(s.as_str()),
                Pattern::Net(..) => false,
            };
            if !hit {
                continue;
            }
            match (r.action, r.ports.is_empty()) {
                (Action::Deny, true) => return Some(format!("denied by {}", r.text)),
                (Action::Deny, false) => continue, // other ports still undecided
                _ => return None,
            }
        }
        if self
            .intercepted
            .binary_search_by(|x| x.as_str().cmp(name))
            .is_ok()
        {
            return None;
        }
        (self.default == Action::Deny).then(|| DEFAULT_DENY.to_string())
    }

    /// Is a connection to the address `ip` (one a name resolved to on the host, or a literal
    /// one) on `port` denied by an address rule? The first IP/CIDR rule matching `ip` and
    /// `port` decides: `deny` gives the reason, any other action or no match gives None (the
    /// name rules, or `decide` for literal addresses, decide the rest). `*` rules are name
    /// and address rules at once and are left to `decide`. v4-mapped IPv6 addresses are
    /// matched as IPv4.
    pub fn address_denied(&self, ip: IpAddr, port: u16) -> Option<String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let r = self.rules.iter().find(|r| {
            matches!(r.pattern, Pattern::Net(n, len) if in_net(ip, n, len))
                && (r.ports.is_empty() || r.ports.contains(&port))
        })?;
        (r.action == Action::Deny).then(|| format!("denied by {}", r.text))
    }
}

const DEFAULT_DENY: &str = "denied by the default policy (policy.default = \"deny\")";

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

    #[test]
    fn names_are_normalised_and_non_names_denied() {
        let p = policy(
            r#"
[[policy.rule]]
host = "example.com"
action = "deny"
[[policy.rule]]
host = "*.com"
action = "allow"
"#,
        );
        assert!(
            matches!(p.decide(Some("EXAMPLE.com."), ANY, 443), Decision::Deny(r) if r.contains("rule 1"))
        );
        // A presentation-format escape: the host's resolver would look up example.com.
        for bad in [
            "exampl\\101.com",
            "example.com\r\n",
            "[::1]",
            "exa mple.com",
        ] {
            assert!(
                matches!(p.decide(Some(bad), ANY, 443), Decision::Deny(r) if r.contains("not a host name")),
                "{bad:?}"
            );
        }
        assert_eq!(p.decide(Some("other.com"), ANY, 443), Decision::Allow);
    }

    #[test]
    fn names_denied_on_every_port() {
        let p = policy(
            r#"
[policy]
default = "deny"
[[policy.rule]]
host = "bad.example.com"
action = "deny"
[[policy.rule]]
host = "*.example.com"
ports = [22]
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
        assert!(p.name_denied("bad.example.com").unwrap().contains("rule 1"));
        assert_eq!(p.name_denied("www.example.com"), None, "allowed on 443");
        assert!(p
            .name_denied("tunnel.attacker.net")
            .unwrap()
            .contains("default"));
        assert_eq!(
            p.name_denied("api.anthropic.com"),
            None,
            "intercepted on 443"
        );
        let open =
            policy("[[policy.rule]]\nhost = \"*.x.test\"\nports = [80]\naction = \"deny\"\n");
        assert_eq!(open.name_denied("a.x.test"), None, "default allow");
        let star = policy("[[policy.rule]]\nhost = \"*\"\naction = \"deny\"\n");
        assert!(star.name_denied("anything.test").is_some());
    }

    #[test]
    fn address_rules_apply_to_resolved_addresses() {
        let p = policy(
            r#"
[[policy.rule]]
host = "203.0.113.7"
action = "allow"
[[policy.rule]]
host = "203.0.113.0/24"
action = "deny"
[[policy.rule]]
host = "2001:db8::/32"
ports = [443]
action = "deny"
[[policy.rule]]
host = "*"
action = "allow"
"#,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p
            .address_denied(ip("203.0.113.5"), 80)
            .unwrap()
            .contains("rule 2"));
        assert!(
            p.address_denied(ip("::ffff:203.0.113.5"), 80).is_some(),
            "v4-mapped"
        );
        assert_eq!(
            p.address_denied(ip("203.0.113.7"), 80),
            None,
            "first match allows"
        );
        assert_eq!(p.address_denied(ip("198.51.100.1"), 80), None);
        assert!(p
            .address_denied(ip("2001:db8::1"), 443)
            .unwrap()
            .contains("rule 3"));
        assert_eq!(p.address_denied(ip("2001:db8::1"), 80), None);
    }
}
