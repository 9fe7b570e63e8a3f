//! Where ax keeps things, following the XDG Base Directory spec.
//!
//! - cache (images): `$XDG_CACHE_HOME/ax` (default `~/.cache/ax`)
//! - state (agents): `$XDG_STATE_HOME/ax` (default `~/.local/state/ax`)
//! - config: `$XDG_CONFIG_HOME/ax` (default `~/.config/ax`)

use std::path::PathBuf;

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() && PathBuf::from(&v).is_absolute() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$XDG_CACHE_HOME/ax`.
pub fn cache_dir() -> PathBuf {
    xdg("XDG_CACHE_HOME", ".cache").join("ax")
}

/// `$XDG_CACHE_HOME/ax/images`: one directory per built image, named by its id.
pub fn images_dir() -> PathBuf {
    cache_dir().join("images")
}

/// `$XDG_STATE_HOME/ax`.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("ax")
}

/// `$XDG_STATE_HOME/ax/agents`: one directory per agent, named by the agent.
pub fn agents_dir() -> PathBuf {
    state_dir().join("agents")
}

/// `$XDG_STATE_HOME/ax/ledger.sqlite`: the metering ledger and audit log shared by every
/// agent's netstack (its `[meter] ledger`), read by `axctl cost` and `axctl audit`
/// (docs/ledger.md).
pub fn ledger_path() -> PathBuf {
    state_dir().join("ledger.sqlite")
}

/// `$XDG_CONFIG_HOME/ax`.
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("ax")
}

/// Finds a helper program shipped beside `axctl` (e.g. `agentd`): `$AX_LIBEXEC/<name>`,
/// then the directory of the running executable, then `../libexec/ax/` relative to it.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AX_LIBEXEC") {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.join("../libexec/ax").join(name)]
        .into_iter()
        .find(|p| p.is_file())
}
