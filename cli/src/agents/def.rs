//! The agent definition file: TOML, one agent per file (`docs/agents.md` is the reference).
//!
//! Every field is optional in a file so that `extends = "claude"` can override only what it
//! names; [`super::resolve`] merges the chain and checks that a `command` remains. Values are
//! validated while they are deserialized, so a bad value is reported with the line and column
//! of that value (`file.toml:3:11: …`).

pub use super::render::Command;
use crate::config::line_col;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// One definition file as written (before `extends` is applied).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefFile {
    /// Must equal the file name without `.toml` when given.
    pub name: Option<toml::Spanned<String>>,
    /// Another agent this one starts from (the next definition of that name below this file
    /// in the precedence order: repo > user > built-in).
    pub extends: Option<toml::Spanned<String>>,
    /// One line for `axctl agents`.
    pub about: Option<String>,
    /// Non-interactive command (`axctl run --prompt`).
    pub command: Option<Command>,
    /// Interactive command (`axctl run` without a prompt, attach).
    pub interactive: Option<Command>,
    /// Environment of the agent's process (merged key by key over the base's).
    pub env: Option<BTreeMap<String, String>>,
    /// Secrets the agent needs (replaces the base's list).
    pub secrets: Option<Vec<SecretReq>>,
    /// Egress policy (replaces the base's).
    pub policy: Option<Policy>,
    /// Virtual CPUs, 1..=64.
    pub cpus: Option<Cpus>,
    /// Guest memory, e.g. `"2G"`, `"512M"`, or an integer in MiB.
    pub memory: Option<Memory>,
    /// Wall-clock limit of the agent's run, humantime (`"30m"`, `"2h"`).
    pub timeout: Option<Timeout>,
    /// Text written to `instructions_file` in the guest.
    pub instructions: Option<String>,
    /// Where `instructions` go: a guest path (`~/.claude/CLAUDE.md`).
    pub instructions_file: Option<GuestPath>,
    /// Which native config format `[[mcp]]` servers are rendered into.
    pub mcp_config: Option<McpConfig>,
    /// MCP servers (merged by name over the base's).
    pub mcp: Option<Vec<Mcp>>,
    /// Files written into the guest before the agent starts (merged by path over the base's).
    pub files: Option<Vec<FileSpec>>,
}

pub use ax_supervisor::launch::{valid_host, Action, HostPattern, Policy, Rule, SecretReq};

/// Virtual CPUs, 1..=64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus(pub u32);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if (1..=64).contains(&n) {
            Ok(Cpus(n as u32))
        } else {
            Err(serde::de::Error::custom(format!(
                "cpus = {n} is out of range; use 1..=64"
            )))
        }
    }
}

/// Guest memory in MiB, 128..=65536.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory(pub u32);

impl Memory {
    /// Parses `"2G"`, `"2GiB"`, `"512M"`, `"512MiB"`, `"1024"` (MiB). Units are binary.
    pub fn parse(s: &str) -> Result<Memory, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("memory {s:?} is not a size; write e.g. \"2G\" or \"512M\""))?;
        let mib = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "m" | "mb" | "mib" => n,
            "g" | "gb" | "gib" => n.saturating_mul(1024),
            _ => {
                return Err(format!(
                    "memory {s:?}: unknown unit {unit:?}; use M or G (e.g. \"2G\")"
                ))
            }
        };
        Memory::mib(mib)
    }

    fn mib(n: u64) -> Result<Memory, String> {
        if (128..=65536).contains(&n) {
            Ok(Memory(n as u32))
        } else {
            Err(format!("memory of {n} MiB is out of range; use 128M..64G"))
        }
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"2G\" or an integer in MiB")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Memory, E> {
                Memory::parse(s).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Memory, E> {
                Memory::mib(n.max(0) as u64).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The run's wall-clock limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match humantime::parse_duration(&s) {
            Ok(t) if !t.is_zero() => Ok(Timeout(t)),
            Ok(_) => Err(serde::de::Error::custom("timeout must be longer than 0s")),
            Err(e) => Err(serde::de::Error::custom(format!(
                "timeout {s:?}: {e}; write e.g. \"30m\" or \"2h\""
            ))),
        }
    }
}

/// A path in the guest: `~/…` (the guest home, `/root`) or absolute; no `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestPath(pub String);

impl GuestPath {
    /// Checks the shape (see the type's docs).
    pub fn parse(s: &str) -> Result<GuestPath, String> {
        let rest = s.strip_prefix("~/").or_else(|| s.strip_prefix('/'));
        match rest {
            Some(r) if !r.is_empty() && !r.split('/').any(|c| c == ".." || c == ".") => {
                Ok(GuestPath(s.to_string()))
            }
            _ => Err(format!(
                "path {s:?} must start with \"~/\" (the guest home) or \"/\" and have no \"..\""
            )),
        }
    }

    /// The absolute guest path, with `~` replaced by `home`.
    pub fn resolve(&self, home: &str) -> String {
        match self.0.strip_prefix("~/") {
            Some(r) => format!("{}/{r}", home.trim_end_matches('/')),
            None => self.0.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for GuestPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        GuestPath::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The agent's native MCP configuration (where `[[mcp]]` servers are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum McpConfig {
    /// `~/.claude.json`, key `mcpServers`.
    Claude,
    /// `~/.codex/config.toml`, tables `[mcp_servers.NAME]`.
    Codex,
    /// `~/.gemini/settings.json`, key `mcpServers`.
    Gemini,
    /// `~/.config/opencode/opencode.json`, key `mcp`.
    Opencode,
}

/// An MCP server: a local command (stdio) or a remote URL (streamable HTTP).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, try_from = "RawMcp")]
pub struct Mcp {
    pub name: String,
    pub transport: McpTransport,
}

/// How an MCP server is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum McpTransport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    name: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl TryFrom<RawMcp> for Mcp {
    type Error = String;
    fn try_from(r: RawMcp) -> Result<Mcp, String> {
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "mcp server name {:?}: use letters, digits, '-' and '_'",
                r.name
            ));
        }
        let transport = match (r.command, r.url) {
            (Some(command), None) if r.headers.is_empty() => McpTransport::Stdio {
                command,
                args: r.args,
                env: r.env,
            },
            (None, Some(url)) if r.args.is_empty() && r.env.is_empty() => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "mcp server {}: url {url:?} must be http(s)://",
                        r.name
                    ));
                }
                McpTransport::Http {
                    url,
                    headers: r.headers,
                }
            }
            _ => {
                return Err(format!(
                    "mcp server {}: give either command (with args, env) or url (with headers)",
                    r.name
                ))
            }
        };
        Ok(Mcp {
            name: r.name,
            transport,
        })
    }
}

/// A file written into the guest before the agent starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: GuestPath,
    /// Permission bits (TOML octal: `0o600`); default `0o644`.
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// The contents; `${SECRET}` expands to the secret's placeholder (docs/agents.md).
    pub contents: String,
}

fn default_mode() -> u32 {
    0o644
}

/// A parse or validation error located in a file: `path:line:col: message`.
#[derive(Debug)]
pub struct DefError {
    pub origin: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for DefError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.col, self.message
        )
    }
}

/// Parses one definition file's text; `origin` names it in errors (a path or `builtin:NAME`).
pub fn parse(text: &str, origin: &str) -> Result<DefFile, DefError> {
    toml::from_str::<DefFile>(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        DefError {
            origin: origin.to_string(),
            line,
            col,
            message: e.message().trim_end().to_string(),
        }
    })
}

/// Reads and parses a definition file.
pub fn load(path: &Path) -> Result<(DefFile, String), DefError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DefError {
        origin: origin.clone(),
        line: 1,
        col: 1,
        message: format!("cannot read: {e}"),
    })?;
    Ok((parse(&text, &origin)?, text))
}

/// An error at byte offset `at` of `text`.
pub fn error_at(text: &str, origin: &str, at: usize, message: String) -> DefError {
    let (line, col) = line_col(text, at);
    DefError {
        origin: origin.to_string(),
        line,
        col,
        message,
    }
}

#[cfg(test)]
mod tests;
