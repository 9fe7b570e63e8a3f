//! How `axctl run` hands an agent definition to the supervisor: `<state>/launch.json`.
//!
//! `axctl run` resolves the definition (docs/agents.md) and its secrets (docs/secrets.md;
//! a missing required secret is a usage error before anything starts), makes one netstack
//! placeholder per secret and renders the definition with them ([`prepare`]). The record
//! holds only what the guest may see: the argv, the environment and the native config files
//! with placeholders, the secret requirements and the policy. Real values never touch the
//! state directory: the supervisor resolves them again from the store or its environment
//! (inherited from `axctl run`) and merges them, with the placeholders, into the config it
//! pipes to ax-netstack ([`net_fragment`]).

use crate::agents::{self, Agent, LaunchVars, Mode, Policy, SecretReq};
use crate::secrets::{self, ResolvedSecret};
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

/// Renders `agent` for instance `name`: with a `prompt` its batch command, without one its
/// interactive command (usage error when it has none). With `net`, its secrets
/// are resolved (usage error naming `axctl secrets add …` when a required one is missing)
/// and each gets a fresh placeholder; without a network the agent gets no secrets at all.
/// Returns the record and the resolved secrets.
pub fn prepare(
    agent: &Agent,
    name: &str,
    prompt: Option<&str>,
    net: bool,
) -> Result<(LaunchRecord, Vec<ResolvedSecret>)> {
    let resolved = if net {
        secrets::resolve(&agent.secrets)?
    } else {
        Vec::new()
    };
    let placeholders: BTreeMap<String, String> = resolved
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                ax_netstack::secrets::placeholder_for(&r.name, &r.value),
            )
        })
        .collect();
    let mode = if prompt.is_some() {
        Mode::Batch
    } else {
        Mode::Interactive
    };
    let l = agent.launch(mode, &LaunchVars::new(name, prompt, &placeholders))?;
    let rec = LaunchRecord {
        agent: agent.name.clone(),
        argv: l.argv,
        env: l.env,
        files: l
            .files
            .into_iter()
            .map(|f| GuestFile {
                path: f.path,
                mode: f.mode,
                contents: f.contents,
            })
            .collect(),
        secrets: l.secrets,
        placeholders,
        policy: l.policy,
        cpus: l.cpus,
        memory_mib: l.memory_mib,
        timeout_secs: l.timeout.map(|d| d.as_secs().max(1)),
    };
    Ok((rec, resolved))
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
            .filter(|r| r.origin == secrets::Origin::Stored)
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// The netstack config fragment for a run: `user` (the `--net-config` file) plus the
/// agent's secrets (`resolved`, with the placeholders of `rec`) and policy. A `[[secret]]`
/// of the same name in `user` wins over the agent's, as does a `[policy]` there.
pub fn net_fragment(
    rec: &LaunchRecord,
    resolved: &[ResolvedSecret],
    user: Option<toml::Table>,
) -> toml::Table {
    let launch = agents::Launch {
        argv: Vec::new(),
        env: BTreeMap::new(),
        files: Vec::new(),
        secrets: rec.secrets.clone(),
        policy: rec.policy.clone(),
        cpus: None,
        memory_mib: None,
        timeout: None,
    };
    let agent_part = launch.netstack_fragment(resolved, &rec.placeholders);
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

    fn resolved(name: &str, value: &str, host: &str) -> ResolvedSecret {
        ResolvedSecret {
            name: name.into(),
            value: value.into(),
            hosts: vec![host.into()],
            body: false,
            env: name.into(),
            origin: secrets::Origin::Environment,
        }
    }

    #[test]
    fn claude_record_has_placeholders_and_the_fragment_the_values() {
        let dirs = agents::Dirs {
            repo: None,
            user: std::path::PathBuf::from("/nonexistent/ax-agents"),
        };
        let agent = agents::load(&dirs, "claude").unwrap();
        let real = "sk-ant-api03-realrealrealrealrealrealrealrealrealreal";
        let ph = BTreeMap::from([(
            "ANTHROPIC_API_KEY".to_string(),
            "sk-ant-api03-axph1".to_string(),
        )]);
        let l = agent
            .launch(Mode::Batch, &LaunchVars::new("a1", Some("do it"), &ph))
            .unwrap();
        let rec = LaunchRecord {
            agent: "claude".into(),
            argv: l.argv,
            env: l.env,
            files: Vec::new(),
            secrets: l.secrets,
            placeholders: ph,
            policy: None,
            cpus: None,
            memory_mib: None,
            timeout_secs: None,
        };
        assert_eq!(rec.argv.last().unwrap(), "do it");
        assert_eq!(rec.env["ANTHROPIC_API_KEY"], "sk-ant-api03-axph1");
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains(real));

        let r = [resolved("ANTHROPIC_API_KEY", real, "api.anthropic.com")];
        let f = net_fragment(&rec, &r, None);
        let s = &f["secret"].as_array().unwrap()[0];
        assert_eq!(s["value"].as_str(), Some(real));
        assert_eq!(s["placeholder"].as_str(), Some("sk-ant-api03-axph1"));

        // A --net-config secret of the same name wins; others are kept; its policy wins.
        let user: toml::Table = toml::from_str(
            "[[secret]]\nname = \"ANTHROPIC_API_KEY\"\nvalue = \"v2\"\nhosts = [\"h\"]\n\
             [policy]\ndefault = \"deny\"\n",
        )
        .unwrap();
        let mut rec2 = rec.clone();
        rec2.policy = Some(toml::from_str("default = \"allow\"").unwrap());
        let f = net_fragment(&rec2, &r, Some(user));
        let a = f["secret"].as_array().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["value"].as_str(), Some("v2"));
        assert_eq!(f["policy"]["default"].as_str(), Some("deny"));
        let f = net_fragment(&rec2, &r, None);
        assert_eq!(f["policy"]["default"].as_str(), Some("allow"));
    }

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
