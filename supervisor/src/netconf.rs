//! The agent's network: the config the supervisor pipes to `ax-netstack --config -`, and what
//! `axctl run` records about it (docs/network.md).
//!
//! `axctl run` writes `<state>/net.json` (`{"enabled": bool, "config_file": path|null}`, no
//! secret in it); the supervisor reads it, loads the `--net-config` fragment (a TOML file with
//! `[[route]]`, `[policy]`, `[[secret]]` and `[limits]`), adds the agent's name, the ledger
//! path and a fresh placeholder for every secret, checks the result with the netstack's own
//! parser and pipes it to ax-netstack on stdin: secret values never reach the state dir.

use crate::error::usage;
use crate::launch::LaunchRecord;
use crate::secret::ResolvedSecret;
use anyhow::{Context, Result};
use ax_netstack::config::{Config, Limits, Policy, Route};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The binary name, found beside axctl (`paths::sibling_binary`) or in `PATH`.
pub const BINARY: &str = "ax-netstack";
/// The guest's MAC address (QEMU's OUI; also ax-netstack's and ax-vmm's default).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";
/// `<state>/net.json`.
pub const CHOICE_FILE: &str = "net.json";

/// What `axctl run` chose for the agent's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetChoice {
    /// `false` with `--no-net`: no network device at all.
    pub enabled: bool,
    /// `--net-config FILE` (absolute), read again by the supervisor.
    pub config_file: Option<PathBuf>,
}

impl NetChoice {
    /// Writes `<dir>/net.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join(CHOICE_FILE), serde_json::to_vec_pretty(self)?)
            .context("writing net.json")
    }

    /// Reads `<dir>/net.json`; an agent without one (made by an older axctl) has no network.
    pub fn load(dir: &Path) -> Result<NetChoice> {
        match std::fs::read(dir.join(CHOICE_FILE)) {
            Ok(b) => serde_json::from_slice(&b).context("reading net.json"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NetChoice {
                enabled: false,
                config_file: None,
            }),
            Err(e) => Err(e).context("reading net.json"),
        }
    }
}

/// A `[[secret]]` of the fragment: the placeholder is optional (generated per agent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct FragmentSecret {
    name: String,
    value: String,
    hosts: Vec<String>,
    #[serde(default)]
    body: bool,
    #[serde(default)]
    placeholder: Option<String>,
}

/// The `--net-config` file's shape (typed, for errors with the file's own line numbers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Fragment {
    #[serde(default, rename = "route")]
    routes: Vec<Route>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default, rename = "secret")]
    secrets: Vec<FragmentSecret>,
    #[serde(default)]
    limits: Option<Limits>,
}

/// Reads and checks a `--net-config` file. Errors (usage): unreadable, not TOML, a key other
/// than `route`, `policy`, `secret`, `limits`, or a field the netstack does not know.
pub fn load_fragment(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(
            format!("--net-config {}: {e}", path.display()),
            "give a readable TOML file (docs/network.md)",
        )
    })?;
    let bad = |e: toml::de::Error| {
        usage(
            format!(
                "--net-config {}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " ")
            ),
            "fix the file; it holds [[route]], [policy], [[secret]] and [limits] (docs/network.md)",
        )
    };
    let _typed: Fragment = toml::from_str(&text).map_err(bad)?;
    toml::from_str(&text).map_err(bad)
}

/// The netstack config for `agent` and the environment for the guest (secret name →
/// placeholder). `placeholder` makes one from a secret's name and value.
pub fn build_config(
    agent: &str,
    ledger: &Path,
    fragment: Option<toml::Table>,
    placeholder: impl Fn(&str, &str) -> String,
) -> Result<(String, Config, BTreeMap<String, String>)> {
    let mut t = fragment.unwrap_or_default();
    let mut env = BTreeMap::new();
    if let Some(toml::Value::Array(secrets)) = t.get_mut("secret") {
        for s in secrets.iter_mut().filter_map(toml::Value::as_table_mut) {
            let name = s.get("name").and_then(|v| v.as_str()).unwrap_or_default();
            let value = s.get("value").and_then(|v| v.as_str()).unwrap_or_default();
            let ph = match s.get("placeholder").and_then(|v| v.as_str()) {
                Some(p) => p.to_string(),
                None => placeholder(name, value),
            };
            env.insert(name.to_string(), ph.clone());
            s.insert("placeholder".into(), toml::Value::String(ph));
        }
    }
    t.insert("agent".into(), toml::Value::String(agent.to_string()));
    let mut meter = toml::Table::new();
    meter.insert(
        "ledger".into(),
        toml::Value::String(ledger.display().to_string()),
    );
    t.insert("meter".into(), toml::Value::Table(meter));
    let text = toml::to_string(&t).context("serializing the netstack config")?;
    let cfg = Config::parse(&text, "the netstack config")
        .map_err(|e| usage(e.to_string(), "fix the --net-config file (docs/network.md)"))?;
    Ok((text, cfg, env))
}

/// The `ax.net=` kernel parameter for `cfg`'s link: `ADDR/PREFIX,GATEWAY,MTU`.
pub fn cmdline_value(cfg: &Config) -> String {
    let n = &cfg.network;
    format!("{}/{},{},{}", n.guest, n.prefix_len, n.gateway, n.mtu)
}

/// Finds ax-netstack: beside axctl, else in `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    crate::paths::sibling_binary(BINARY)
        .or_else(|| crate::driver::qemu::which(BINARY))
        .ok_or_else(|| {
            usage(
                "ax-netstack not found beside axctl or in PATH",
                "install it (scripts/install, or cargo build -p ax-netstack), or run with --no-net",
            )
        })
}

/// The agent's part of the netstack config (netstack/src/config.rs, docs/network.md): one
/// `[[secret]]` per resolved secret (`name`, real `value`, the store's `hosts`, `body`, and
/// `placeholder` from `placeholders` when it has one: the same value the guest was rendered
/// with) and `[policy]` when the definition has one. It holds secret values, so it must never
/// be written to disk; the supervisor pipes it to `ax-netstack`.
pub fn secrets_fragment(
    resolved: &[ResolvedSecret],
    placeholders: &BTreeMap<String, String>,
    policy: Option<&crate::launch::Policy>,
) -> toml::Table {
    let mut t = toml::Table::new();
    let secrets: Vec<toml::Value> = resolved
        .iter()
        .map(|r| {
            let mut s = toml::Table::new();
            s.insert("name".into(), r.name.clone().into());
            s.insert("value".into(), r.value.clone().into());
            s.insert(
                "hosts".into(),
                toml::Value::Array(r.hosts.iter().map(|h| h.clone().into()).collect()),
            );
            s.insert("body".into(), r.body.into());
            if let Some(p) = placeholders.get(&r.name) {
                s.insert("placeholder".into(), p.clone().into());
            }
            toml::Value::Table(s)
        })
        .collect();
    if !secrets.is_empty() {
        t.insert("secret".into(), toml::Value::Array(secrets));
    }
    if let Some(p) = policy {
        t.insert(
            "policy".into(),
            toml::Value::try_from(p).expect("a policy is plain data"),
        );
    }
    t
}

/// The netstack config fragment for a run: `user` (the `--net-config` file) plus the
/// agent's secrets (`resolved`, with the placeholders of `rec`) and policy. A `[[secret]]`
/// of the same name in `user` wins over the agent's, as does a `[policy]` there.
pub fn net_fragment(
    rec: &LaunchRecord,
    resolved: &[ResolvedSecret],
    user: Option<toml::Table>,
) -> toml::Table {
    let agent_part = secrets_fragment(resolved, &rec.placeholders, rec.policy.as_ref());
    let mut t = user.unwrap_or_default();
    let user_names: Vec<String> = match t.get("secret") {
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.get("name").and_then(|n| n.as_str()).map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(toml::Value::Array(secrets)) = agent_part.get("secret") {
        let add: Vec<toml::Value> = secrets
            .iter()
            .filter(|s| {
                let n = s.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                !user_names.iter().any(|u| u == n)
            })
            .cloned()
            .collect();
        if !add.is_empty() {
            match t
                .entry("secret")
                .or_insert_with(|| toml::Value::Array(Vec::new()))
            {
                toml::Value::Array(a) => a.extend(add),
                other => *other = toml::Value::Array(add),
            }
        }
    }
    if let Some(p) = agent_part.get("policy") {
        t.entry("policy").or_insert_with(|| p.clone());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(text: &str) -> Result<toml::Table> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("net.toml");
        std::fs::write(&p, text).unwrap();
        load_fragment(&p)
    }

    #[test]
    fn fragment_is_merged_with_placeholders() {
        let f = fragment(
            "[[route]]\nhost = \"api.anthropic.com\"\naddress = \"127.0.0.1:8443\"\n\
             [policy]\ndefault = \"deny\"\n\
             [[secret]]\nname = \"ANTHROPIC_API_KEY\"\nvalue = \"sk-real\"\nhosts = [\"api.anthropic.com\"]\n\
             [limits]\nmax_usd = 2.5\n",
        )
        .unwrap();
        let (text, cfg, env) =
            build_config("a1", Path::new("/l/ledger.sqlite"), Some(f), |n, _| {
                format!("ph-{n}")
            })
            .unwrap();
        assert_eq!(cfg.agent, "a1");
        assert_eq!(cfg.secrets[0].placeholder, "ph-ANTHROPIC_API_KEY");
        assert_eq!(env["ANTHROPIC_API_KEY"], "ph-ANTHROPIC_API_KEY");
        assert_eq!(
            cfg.meter.ledger.as_deref(),
            Some(Path::new("/l/ledger.sqlite"))
        );
        assert_eq!(cfg.limits.max_usd, Some(2.5));
        assert!(text.contains("sk-real"), "the value goes to the netstack");
        assert!(!env.values().any(|v| v.contains("sk-real")));
        assert_eq!(cmdline_value(&cfg), "100.96.0.2/30,100.96.0.1,1500");
        let (_, none, env) =
            build_config("a2", Path::new("/l"), None, |_, _| unreachable!()).unwrap();
        assert!(none.secrets.is_empty() && env.is_empty());
    }

    #[test]
    fn fragment_errors_name_the_file_and_line() {
        let e = fragment("[policy]\ndefualt = \"deny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("net.toml") && e.contains("line 2"), "{e}");
        let e = fragment("agent = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("agent"), "{e}");
        // Semantic checks are the netstack's own.
        let f = fragment("[[secret]]\nname = \"K\"\nvalue = \"v\"\nhosts = []\n").unwrap();
        let e = build_config("a", Path::new("/l"), Some(f), |_, _| "p".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one host"), "{e}");
    }
}
