//! `image/agents.lock.toml`: the agent CLIs of the agents layer (`agents.erofs`, mounted by
//! agentd on `/opt/ax`), pinned by exact npm version and the registry's sha512 integrity
//! (Subresource Integrity format, `sha512-<base64>`, as npm's package-lock records it).
//!
//! This module parses the lock and picks the runtimes a build wants; [`super::agents_fetch`]
//! downloads and verifies the tarballs, [`super::agents_layer`] lays them out and makes the
//! erofs. Format and update procedure: docs/image.md, "The agents layer".

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::error;

/// The agents lock shipped with this axctl (embedded at compile time).
pub const EMBEDDED: &str = include_str!("../agents.lock.toml");

/// The runtime every `node = true` runtime needs on `PATH`.
pub const NODE_RUNTIME: &str = "node";

/// Parsed `agents.lock.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsLock {
    /// Format version (1).
    pub schema: u32,
    /// Filesystem UUID given to mkfs.erofs.
    pub erofs_uuid: String,
    /// mkfs.erofs compressor: `none` or e.g. `lz4hc`.
    pub compression: String,
    /// The runtimes, in lock order (`node` first).
    #[serde(rename = "runtime")]
    pub runtimes: Vec<Runtime>,
}

/// One `[[runtime]]`: an agent CLI (or the node runtime) and its npm packages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Short name (`claude`, `codex`, `gemini`, `opencode`, `node`); also its directory in
    /// the layer.
    pub name: String,
    /// Version of the runtime's main package (what `<bin> --version` reports).
    pub version: String,
    /// Needs the `node` runtime (its bins are `#!/usr/bin/env node` scripts).
    pub node: bool,
    /// Command name → file, relative to the runtime's directory; each becomes
    /// `/opt/ax/bin/<command>`.
    pub bins: BTreeMap<String, String>,
    /// Install steps replacing the wrapper's postinstall: hardlink `from` over `to`.
    #[serde(default)]
    pub place: Vec<Place>,
    /// The complete set of packages to unpack.
    #[serde(rename = "package")]
    pub packages: Vec<NpmPackage>,
}

/// One install step: `to` becomes a hardlink of `from` (paths relative to the runtime dir).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// The platform binary as unpacked.
    pub from: String,
    /// Where the wrapper expects it.
    pub to: String,
}

/// One npm package: where it goes and what its tarball must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NpmPackage {
    /// Directory relative to the runtime dir, e.g. `node_modules/@openai/codex-linux-x64`.
    pub path: String,
    /// Registry name (`npm pack <name>@<version>` fetches it; differs from the path for npm
    /// aliases such as `@openai/codex@0.169.0-linux-x64`).
    pub name: String,
    /// Exact version.
    pub version: String,
    /// `sha512-<base64>` of the tarball.
    pub integrity: String,
}

impl NpmPackage {
    /// `name@version`, the spec `npm pack` takes.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The 64-byte sha512 the tarball must have (decoded from [`Self::integrity`]).
    pub fn sha512(&self) -> anyhow::Result<[u8; 64]> {
        use base64::Engine;
        let b64 = self
            .integrity
            .strip_prefix("sha512-")
            .ok_or_else(|| anyhow::anyhow!("{}: integrity is not sha512-…", self.spec()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .with_context(|| format!("{}: integrity is not base64", self.spec()))?;
        raw.try_into()
            .map_err(|_| anyhow::anyhow!("{}: sha512 integrity is not 64 bytes", self.spec()))
    }
}

/// A lock and the bytes it was read from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Parsed pins.
    pub lock: AgentsLock,
    /// Raw text (its sha256 goes into the manifest and the layer cache key).
    pub text: String,
}

/// Which runtimes a build puts into the agents layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// Every runtime in the lock (the default).
    #[default]
    All,
    /// No agents layer (`--no-agents`).
    None,
    /// These (`--agents claude,codex`); `node` is added when one of them needs it.
    Only(Vec<String>),
}

fn relative_ok(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parses lock text, checking every field the build relies on (names, relative paths inside
/// the runtime dir, sha512 integrity strings). Errors are usage errors (exit 2).
pub fn parse(text: &str, origin: &str) -> anyhow::Result<AgentsLock> {
    let bad = |what: String| {
        error::usage(
            format!("{origin}: {what}"),
            "regenerate it with scripts/lock-agents (docs/image.md, \"The agents layer\")",
        )
    };
    let lock: AgentsLock =
        toml::from_str(text).map_err(|e| bad(format!("invalid agents lock file: {e}")))?;
    if lock.schema != 1 {
        return Err(bad(format!(
            "agents lock schema {} is not supported (this axctl reads 1)",
            lock.schema
        )));
    }
    let mut seen = Vec::new();
    for r in &lock.runtimes {
        if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(bad(format!(
                "runtime name {:?} is not lowercase letters",
                r.name
            )));
        }
        if seen.contains(&r.name.as_str()) || r.name == "bin" {
            return Err(bad(format!(
                "runtime {:?} is listed twice or reserved",
                r.name
            )));
        }
        seen.push(&r.name);
        if r.packages.is_empty() {
            return Err(bad(format!("runtime {} has no packages", r.name)));
        }
        for (cmd, file) in &r.bins {
            if cmd.is_empty() || cmd.contains('/') || !relative_ok(file) {
                return Err(bad(format!(
                    "runtime {}: bad bin {cmd:?} = {file:?}",
                    r.name
                )));
            }
        }
        for p in &r.place {
            if !relative_ok(&p.from) || !relative_ok(&p.to) {
                return Err(bad(format!("runtime {}: bad place step {p:?}", r.name)));
            }
        }
        for p in &r.packages {
            if !relative_ok(&p.path) || !p.path.starts_with("node_modules/") {
                return Err(bad(format!("{}: bad path {:?}", p.spec(), p.path)));
            }
            if p.name.is_empty() || p.version.is_empty() || p.spec().contains(char::is_whitespace) {
                return Err(bad(format!("bad package {:?}", p.spec())));
            }
            p.sha512().map_err(|e| bad(format!("{e:#}")))?;
        }
    }
    if lock.runtimes.iter().any(|r| r.node) && !seen.contains(&NODE_RUNTIME) {
        return Err(bad(
            "a runtime needs node, but there is no node runtime".into()
        ));
    }
    Ok(lock)
}

/// Loads `path`, or the embedded lock when `None`.
pub fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let (text, origin) = match path {
        None => (EMBEDDED.to_string(), "embedded agents lock".to_string()),
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map_err(|e| {
                    error::usage(format!("{e:#}"), "pass an existing file to --agents-lock")
                })?,
            p.display().to_string(),
        ),
    };
    Ok(Loaded {
        lock: parse(&text, &origin)?,
        text,
    })
}

impl AgentsLock {
    /// The runtimes `sel` asks for, in lock order, with `node` added when needed; empty for
    /// [`Selection::None`]. An unknown name is a usage error.
    pub fn select(&self, sel: &Selection) -> anyhow::Result<Vec<&Runtime>> {
        let wanted: Vec<&str> = match sel {
            Selection::None => return Ok(Vec::new()),
            Selection::All => self.runtimes.iter().map(|r| r.name.as_str()).collect(),
            Selection::Only(names) => {
                let known: Vec<&str> = self.runtimes.iter().map(|r| r.name.as_str()).collect();
                for n in names {
                    if !known.contains(&n.as_str()) {
                        return Err(error::usage(
                            format!("--agents: no runtime {n:?} in the agents lock"),
                            format!("choose from {}", known.join(", ")),
                        ));
                    }
                }
                names.iter().map(String::as_str).collect()
            }
        };
        let needs_node = self
            .runtimes
            .iter()
            .any(|r| r.node && wanted.contains(&r.name.as_str()));
        Ok(self
            .runtimes
            .iter()
            .filter(|r| wanted.contains(&r.name.as_str()) || (needs_node && r.name == NODE_RUNTIME))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lock_parses_and_pins_the_four_agents() {
        let l = parse(EMBEDDED, "embedded").unwrap();
        let names: Vec<&str> = l.runtimes.iter().map(|r| r.name.as_str()).collect();
        for n in ["node", "claude", "codex", "gemini", "opencode"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        for r in &l.runtimes {
            let main = &r.packages[0];
            assert_eq!(main.version, r.version, "{}", r.name);
            for p in &r.packages {
                assert_eq!(p.sha512().unwrap().len(), 64);
            }
            // Every bin and install step points into one of the runtime's packages.
            let inside = |f: &str| {
                r.packages
                    .iter()
                    .any(|p| f.starts_with(&format!("{}/", p.path)))
            };
            for f in r.bins.values() {
                assert!(inside(f), "{}: bin {f} outside its packages", r.name);
            }
            for p in &r.place {
                assert!(inside(&p.from) && inside(&p.to), "{}: {p:?}", r.name);
            }
        }
        let node = l.runtimes.iter().find(|r| r.name == "node").unwrap();
        let major: u32 = node.version.split('.').next().unwrap().parse().unwrap();
        assert!(
            major >= 20,
            "gemini needs node >= 20, lock has {}",
            node.version
        );
    }

    #[test]
    fn selection_adds_node_when_needed() {
        let l = parse(EMBEDDED, "embedded").unwrap();
        let names = |s: Selection| -> Vec<String> {
            l.select(&s)
                .unwrap()
                .iter()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(names(Selection::None), Vec::<String>::new());
        assert_eq!(names(Selection::All).len(), l.runtimes.len());
        assert_eq!(names(Selection::Only(vec!["claude".into()])), ["claude"]);
        assert_eq!(
            names(Selection::Only(vec!["codex".into(), "claude".into()])),
            ["node", "claude", "codex"]
        );
        let e = l
            .select(&Selection::Only(vec!["cursor".into()]))
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e.to_string().contains("choose from node, claude"), "{e}");
    }

    #[test]
    fn bad_locks_are_usage_errors() {
        for (from, to) in [
            ("schema = 1", "schema = 2"),
            ("integrity = \"sha512-", "integrity = \"sha1-"),
            ("path = \"node_modules/@openai/codex\"", "path = \"../etc\""),
            ("name = \"claude\"", "name = \"Claude!\""),
        ] {
            assert!(EMBEDDED.contains(from), "{from}");
            let e = parse(&EMBEDDED.replacen(from, to, 1), "x").unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{from}: {e}");
            assert!(e.to_string().contains("scripts/lock-agents"), "{e}");
        }
    }
}
