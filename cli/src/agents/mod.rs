//! Agent definitions: what runs in the guest, with which secrets, policy, resources, files.
//!
//! Definitions are TOML files (reference: `docs/agents.md`): built-ins `claude`, `codex`,
//! `gemini`, `opencode`, `shell` (embedded from `builtin/*.toml`), the user's
//! `$XDG_CONFIG_HOME/ax/agents/NAME.toml` and the repository's `.ax/agents/NAME.toml`
//! (precedence and `extends`: [`resolve`]). [`load`] gives an [`Agent`]; [`Agent::launch`]
//! turns it into a [`Launch`], the plain description the supervisor acts on: argv, env,
//! files to write in the guest, secret requirements, policy, resources.

pub mod builtin;
pub mod def;
pub mod native;
pub mod render;
pub mod resolve;

pub use def::{Action, McpConfig, Policy, Rule, SecretReq};
pub use resolve::Dirs;

use crate::error::usage;
use anyhow::Result;
use def::{Command, DefFile, FileSpec, GuestPath, Mcp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where an agent's (top) definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    /// `$XDG_CONFIG_HOME/ax/agents/NAME.toml`.
    User(PathBuf),
    /// `<repo>/.ax/agents/NAME.toml`.
    Repo(PathBuf),
}

impl Source {
    /// `builtin`, `user` or `repo`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::User(_) => "user",
            Source::Repo(_) => "repo",
        }
    }
    /// The file, for user and repo definitions.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Source::Builtin => None,
            Source::User(p) | Source::Repo(p) => Some(p),
        }
    }
}

/// A resolved agent definition (its `extends` chain applied and validated).
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub source: Source,
    pub about: String,
    pub command: Command,
    pub interactive: Option<Command>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretReq>,
    pub policy: Option<Policy>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub timeout: Option<Duration>,
    /// `instructions_file` and `instructions`.
    pub instructions: Option<(GuestPath, String)>,
    pub mcp_config: Option<McpConfig>,
    pub mcp: Vec<Mcp>,
    pub files: Vec<FileSpec>,
}

/// Builds the [`Agent`] from a merged definition; the error is the message only (the caller
/// adds the location).
pub(crate) fn finish(name: &str, source: Source, d: DefFile) -> Result<Agent, String> {
    let command = d
        .command
        .ok_or("no command; add command = [\"prog\", \"{prompt}\"] (or extends = \"…\")")?;
    let mcp = d.mcp.unwrap_or_default();
    if !mcp.is_empty() && d.mcp_config.is_none() {
        return Err("[[mcp]] servers need mcp_config = \"claude\" | \"codex\" | \"gemini\" | \"opencode\" (the agent's native config format)".into());
    }
    let instructions = match (d.instructions_file, d.instructions) {
        (Some(f), Some(t)) => Some((f, t)),
        (None, None) => None,
        (None, Some(_)) => {
            return Err(
                "instructions need instructions_file = \"~/…\" (where the agent reads them)".into(),
            )
        }
        (Some(_), None) => None, // a base's file name without text: nothing to write
    };
    for s in d.secrets.iter().flatten() {
        if s.name.is_empty()
            || !s
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "secret name {:?}: use letters, digits and '_'",
                s.name
            ));
        }
    }
    Ok(Agent {
        name: name.to_string(),
        source,
        about: d.about.unwrap_or_default(),
        command,
        interactive: d.interactive,
        env: d.env.unwrap_or_default(),
        secrets: d.secrets.unwrap_or_default(),
        policy: d.policy,
        cpus: d.cpus.map(|c| c.0),
        memory_mib: d.memory.map(|m| m.0),
        timeout: d.timeout.map(|t| t.0),
        instructions,
        mcp_config: d.mcp_config,
        mcp,
        files: d.files.unwrap_or_default(),
    })
}

/// Loads agent `name` from `dirs`. Errors: unknown name (usage, lists the known ones); a
/// broken file (usage, `path:line:col: what`).
pub fn load(dirs: &Dirs, name: &str) -> Result<Agent> {
    match resolve::load(dirs, name).map_err(def_error)? {
        Some(a) => Ok(a),
        None => {
            let known = resolve::names(dirs).map_err(def_error)?;
            Err(usage(
                format!("unknown agent '{name}'"),
                format!(
                    "use one of: {} (or define it in {}/{name}.toml)",
                    known.join(", "),
                    dirs.user.display()
                ),
            ))
        }
    }
}

/// [`load`] with the repository around the current directory ([`Dirs::from_cwd`]).
pub fn find(name: &str) -> Result<Agent> {
    load(&Dirs::from_cwd(), name)
}

/// Every agent visible from `dirs` (highest-precedence definition of each name), by name.
/// Any broken file is an error.
pub fn list(dirs: &Dirs) -> Result<Vec<Agent>> {
    let mut out = Vec::new();
    for n in resolve::names(dirs).map_err(def_error)? {
        if let Some(a) = resolve::load(dirs, &n).map_err(def_error)? {
            out.push(a);
        }
    }
    Ok(out)
}

fn def_error(e: def::DefError) -> anyhow::Error {
    usage(
        e.to_string(),
        "fix the agent definition (reference: docs/agents.md)",
    )
}

/// Which command to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `command`: run the prompt to completion.
    Batch,
    /// `interactive`: a session on a terminal (`{prompt}` may be absent).
    Interactive,
}

/// Inputs of [`Agent::launch`].
#[derive(Debug, Clone)]
pub struct LaunchVars<'a> {
    pub prompt: Option<&'a str>,
    /// The agent instance's name (`axctl ps`), for `{name}`.
    pub name: &'a str,
    /// The guest home (`/root`: agentd runs agents as root with HOME=/root).
    pub home: &'a str,
    /// The guest work tree (`/workspace`).
    pub workspace: &'a str,
    /// Secret name → the value the guest gets for it (the netstack placeholder). Each
    /// requirement's `env` variable gets it, and `${NAME}` in `env` values and file contents
    /// expands to it. Secrets not in the map are left out.
    pub secrets: &'a BTreeMap<String, String>,
}

impl<'a> LaunchVars<'a> {
    /// Guest defaults: home `/root`, workspace `/workspace`, no secrets.
    pub fn new(
        name: &'a str,
        prompt: Option<&'a str>,
        secrets: &'a BTreeMap<String, String>,
    ) -> Self {
        LaunchVars {
            prompt,
            name,
            home: "/root",
            workspace: "/workspace",
            secrets,
        }
    }
}

/// A file for the guest: absolute path, permission bits, contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

/// Everything the supervisor needs to start one agent (plain data, no templates left).
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    /// The command agentd runs (cwd `/workspace`).
    pub argv: Vec<String>,
    /// Environment on top of agentd's defaults: the definition's `env` and one variable per
    /// secret in [`LaunchVars::secrets`].
    pub env: BTreeMap<String, String>,
    /// Files to write before starting, in order (parent directories created, mode applied).
    pub files: Vec<GuestFile>,
    /// What to resolve (`axctl`'s secret store) and hand to the netstack.
    pub secrets: Vec<SecretReq>,
    /// Egress policy for the netstack (`None`: the netstack's default).
    pub policy: Option<Policy>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u32>,
    #[serde(with = "humantime_opt")]
    pub timeout: Option<Duration>,
}

mod humantime_opt {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl Agent {
    /// The non-interactive argv for `prompt` with the guest defaults (instance name `agent`).
    /// Kept for `axctl run` until it uses [`Agent::launch`].
    pub fn argv(&self, prompt: &str) -> Vec<String> {
        let none = BTreeMap::new();
        render::render_command(
            &self.command,
            &render_vars(&LaunchVars::new("agent", Some(prompt), &none)),
        )
    }

    /// Renders everything for one start. Errors (usage): `Interactive` without an
    /// `interactive` command; `Batch` without a prompt; a `files` entry that cannot take the
    /// `[[mcp]]` servers.
    pub fn launch(&self, mode: Mode, vars: &LaunchVars) -> Result<Launch> {
        let cmd = match mode {
            Mode::Batch => {
                if vars.prompt.is_none() {
                    return Err(usage(
                        format!(
                            "agent {} needs a prompt to run non-interactively",
                            self.name
                        ),
                        "give --prompt '…'",
                    ));
                }
                &self.command
            }
            Mode::Interactive => self.interactive.as_ref().ok_or_else(|| {
                usage(
                    format!("agent {} has no interactive command", self.name),
                    format!(
                        "give --prompt '…', or add interactive = [...] to its definition ({})",
                        self.where_defined()
                    ),
                )
            })?,
        };
        let argv = render::render_command(cmd, &render_vars(vars));
        let mut env: BTreeMap<String, String> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), render::expand_secrets(v, vars.secrets)))
            .collect();
        for s in &self.secrets {
            if let Some(v) = vars.secrets.get(&s.name) {
                env.insert(s.env_var().to_string(), v.clone());
            }
        }
        let files = self.guest_files(vars)?;
        Ok(Launch {
            argv,
            env,
            files,
            secrets: self.secrets.clone(),
            policy: self.policy.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            timeout: self.timeout,
        })
    }

    fn guest_files(&self, vars: &LaunchVars) -> Result<Vec<GuestFile>> {
        let mut files: Vec<(GuestPath, u32, String)> = self
            .files
            .iter()
            .map(|f| (f.path.clone(), f.mode, f.contents.clone()))
            .collect();
        if let Some(fmt) = self.mcp_config.filter(|_| !self.mcp.is_empty()) {
            let path = native::config_path(fmt);
            let i = files.iter().position(|f| f.0 == path);
            let merged = native::merge_mcp(fmt, &self.mcp, i.map(|i| files[i].2.as_str()))
                .map_err(|m| {
                    usage(
                        format!("agent {}: {m}", self.name),
                        "fix the agent definition (reference: docs/agents.md)",
                    )
                })?;
            match i {
                Some(i) => files[i].2 = merged,
                None => files.push((path, 0o600, merged)),
            }
        }
        if let Some((path, text)) = &self.instructions {
            match files.iter_mut().find(|f| &f.0 == path) {
                Some(f) => {
                    f.2.push_str("\n\n");
                    f.2.push_str(text);
                }
                None => files.push((path.clone(), 0o644, text.clone())),
            }
        }
        Ok(files
            .into_iter()
            .map(|(p, mode, c)| GuestFile {
                path: p.resolve(vars.home),
                mode,
                contents: render::expand_secrets(&c, vars.secrets),
            })
            .collect())
    }

    /// `builtin` or the file path, for messages.
    pub fn where_defined(&self) -> String {
        match self.source.path() {
            Some(p) => p.display().to_string(),
            None => format!(
                "built-in; override it in $XDG_CONFIG_HOME/ax/agents/{}.toml",
                self.name
            ),
        }
    }
}

fn render_vars<'a>(v: &LaunchVars<'a>) -> render::Vars<'a> {
    render::Vars {
        prompt: v.prompt,
        name: v.name,
        home: v.home,
        workspace: v.workspace,
    }
}

#[cfg(test)]
mod tests;
