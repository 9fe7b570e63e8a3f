//! Finding definitions and applying `extends`.
//!
//! Precedence for a name: the repository's `.ax/agents/NAME.toml` > the user's
//! `$XDG_CONFIG_HOME/ax/agents/NAME.toml` > the built-in. `extends = "BASE"` starts from BASE
//! as found from the top of that order, except `extends` of the file's own name, which starts
//! from the next definition of that name below the file (a user `claude.toml` with
//! `extends = "claude"` tweaks the built-in). Merging: scalars and lists replace the base's;
//! `env` merges key by key; `mcp` merges by server name; `files` merge by path.

use super::builtin;
use super::def::{self, DefError, DefFile, FileSpec, Mcp};
use super::{Agent, Source};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where definitions are looked up: the repository's `.ax/agents` (if any) and the user's
/// `$XDG_CONFIG_HOME/ax/agents`.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub repo: Option<PathBuf>,
    pub user: PathBuf,
}

impl Dirs {
    /// The user's directory and, given the work tree root of a repository, its `.ax/agents`.
    pub fn new(repo_root: Option<&Path>) -> Dirs {
        Dirs {
            repo: repo_root.map(|r| r.join(".ax/agents")),
            user: crate::paths::config_dir().join("agents"),
        }
    }

    /// Like [`Dirs::new`] with the git repository around the current directory (as `git` and
    /// `axctl run` find it), if any.
    pub fn from_cwd() -> Dirs {
        let root = std::env::current_dir()
            .ok()
            .and_then(|cwd| gix::discover(cwd).ok())
            .and_then(|r| r.workdir().map(|w| w.to_path_buf()));
        Dirs::new(root.as_deref())
    }
}

/// Layer index: 0 repo, 1 user, 2 built-in.
const LAYERS: usize = 3;

/// One definition file found in a layer.
struct Found {
    layer: usize,
    source: Source,
    origin: String,
    text: String,
    file: DefFile,
}

fn layer_path(dirs: &Dirs, layer: usize, name: &str) -> Option<PathBuf> {
    match layer {
        0 => dirs.repo.as_ref().map(|d| d.join(format!("{name}.toml"))),
        1 => Some(dirs.user.join(format!("{name}.toml"))),
        _ => None,
    }
}

/// The definition of `name` in `layer`, if that layer has one.
fn find_in(dirs: &Dirs, layer: usize, name: &str) -> Result<Option<Found>, DefError> {
    if layer == 2 {
        return Ok(builtin::text(name).map(|text| {
            let origin = format!("builtin:{name}.toml");
            let file = def::parse(text, &origin).expect("built-in definitions parse (tested)");
            Found {
                layer,
                source: Source::Builtin,
                origin,
                text: text.to_string(),
                file,
            }
        }));
    }
    let Some(path) = layer_path(dirs, layer, name) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let (file, text) = def::load(&path)?;
    let source = if layer == 0 {
        Source::Repo(path.clone())
    } else {
        Source::User(path.clone())
    };
    Ok(Some(Found {
        layer,
        source,
        origin: path.display().to_string(),
        text,
        file,
    }))
}

fn find_from(dirs: &Dirs, from: usize, name: &str) -> Result<Option<Found>, DefError> {
    for layer in from..LAYERS {
        if let Some(f) = find_in(dirs, layer, name)? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Loads agent `name` with its `extends` chain applied. `Ok(None)`: no such agent.
pub fn load(dirs: &Dirs, name: &str) -> Result<Option<Agent>, DefError> {
    let Some(top) = find_from(dirs, 0, name)? else {
        return Ok(None);
    };
    let source = top.source.clone();
    let (origin, text) = (top.origin.clone(), top.text.clone());
    let merged = chain(dirs, name, top, &mut BTreeSet::new())?;
    super::finish(name, source, merged)
        .map(Some)
        .map_err(|m| DefError {
            origin,
            line: 1,
            col: 1,
            message: m,
        })
        .map_err(|mut e| {
            // Point at `extends` when there is one: the missing piece may be in the base.
            if let Some(at) = text.find("extends") {
                let (l, c) = crate::config::line_col(&text, at);
                e.line = l;
                e.col = c;
            }
            e
        })
}

/// `found` merged over its base chain.
fn chain(
    dirs: &Dirs,
    name: &str,
    found: Found,
    seen: &mut BTreeSet<(usize, String)>,
) -> Result<DefFile, DefError> {
    if let Some(n) = &found.file.name {
        if n.get_ref() != name {
            return Err(def::error_at(
                &found.text,
                &found.origin,
                n.span().start,
                format!("name = {:?} differs from the file name {name}.toml; make them equal (or drop name)", n.get_ref()),
            ));
        }
    }
    seen.insert((found.layer, name.to_string()));
    let Some(base) = found.file.extends.clone() else {
        return Ok(found.file);
    };
    let base_name = base.get_ref().as_str();
    let from = if base_name == name {
        found.layer + 1
    } else {
        0
    };
    let at = |msg: String| def::error_at(&found.text, &found.origin, base.span().start, msg);
    let base_found = find_from(dirs, from, base_name)?.ok_or_else(|| {
        at(format!(
            "extends {base_name:?}: no such agent below this file; see axctl agents"
        ))
    })?;
    if seen.contains(&(base_found.layer, base_name.to_string())) {
        return Err(at(format!("extends {base_name:?} makes a cycle; break it")));
    }
    let base_def = chain(dirs, base_name, base_found, seen)?;
    Ok(merge(base_def, found.file))
}

/// `over` on top of `base` (rules in the module docs).
pub fn merge(base: DefFile, over: DefFile) -> DefFile {
    let env = match (base.env, over.env) {
        (Some(mut b), Some(o)) => {
            b.extend(o);
            Some(b)
        }
        (b, o) => o.or(b),
    };
    let mcp = merge_by(base.mcp, over.mcp, |m: &Mcp| m.name.clone());
    let files = merge_by(base.files, over.files, |f: &FileSpec| f.path.clone());
    DefFile {
        name: over.name.or(base.name),
        extends: None,
        about: over.about.or(base.about),
        command: over.command.or(base.command),
        interactive: over.interactive.or(base.interactive),
        env,
        secrets: over.secrets.or(base.secrets),
        policy: over.policy.or(base.policy),
        cpus: over.cpus.or(base.cpus),
        memory: over.memory.or(base.memory),
        timeout: over.timeout.or(base.timeout),
        instructions: over.instructions.or(base.instructions),
        instructions_file: over.instructions_file.or(base.instructions_file),
        mcp_config: over.mcp_config.or(base.mcp_config),
        mcp,
        files,
    }
}

fn merge_by<T, K: PartialEq>(
    base: Option<Vec<T>>,
    over: Option<Vec<T>>,
    key: impl Fn(&T) -> K,
) -> Option<Vec<T>> {
    match (base, over) {
        (Some(mut b), Some(o)) => {
            for item in o {
                match b.iter().position(|x| key(x) == key(&item)) {
                    Some(i) => b[i] = item,
                    None => b.push(item),
                }
            }
            Some(b)
        }
        (b, o) => o.or(b),
    }
}

/// Every agent name defined in any layer, sorted. A file whose name is not a valid agent
/// name is an error (so it is not silently ignored).
pub fn names(dirs: &Dirs) -> Result<Vec<String>, DefError> {
    let mut names: BTreeSet<String> = builtin::NAMES.iter().map(|s| s.to_string()).collect();
    for dir in [dirs.repo.as_ref(), Some(&dirs.user)].into_iter().flatten() {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("toml") {
                continue;
            }
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !valid_name(stem) {
                return Err(DefError {
                    origin: p.display().to_string(),
                    line: 1,
                    col: 1,
                    message: "the file name is not an agent name; rename it to 1-63 of a-z, 0-9, '-', '_' plus .toml".into(),
                });
            }
            names.insert(stem.to_string());
        }
    }
    Ok(names.into_iter().collect())
}

/// Agent definition names: 1-63 of `a-z0-9-_`, starting with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}
